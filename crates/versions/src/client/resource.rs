//! Registering a resource, and what a registered one offers: its versions,
//! updates, fetches and content (with the local fallback).

use super::*;

/// The request a resource stands for: what the local fallback sends.
#[derive(Debug, Clone)]
pub(super) struct RequestSpec {
    pub(super) method: Method,
    pub(super) url: String,
    pub(super) query: Vec<(String, String)>,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) body: Option<Value>,
}

/// Describes a resource to register; see [`Client::resource`].
#[derive(Debug)]
pub struct ResourceBuilder {
    pub(super) client: Client,
    pub(super) spec: RequestSpec,
    pub(super) group: Option<String>,
    pub(super) strategy: Option<Strategy>,
    pub(super) limits: Option<Limits>,
    pub(super) notes: Notes,
    pub(super) purge_on_change: Option<bool>,
}

/// A resource's free-form description and link.
#[derive(Debug, Default)]
pub(super) struct Notes {
    pub(super) description: Option<String>,
    pub(super) link: Option<String>,
}

impl ResourceBuilder {
    /// Adds query parameters.
    pub fn query<N: Into<String>, V: Into<String>>(mut self, pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        self.spec
            .query
            .extend(pairs.into_iter().map(|(name, value)| (name.into(), value.into())));
        self
    }

    /// Adds a request header (sent to the origin).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.headers.insert(name.into().to_ascii_lowercase(), value.into());
        self
    }

    /// The request body: a JSON value, sent as JSON; a string, sent as is.
    pub fn body(mut self, body: Value) -> Self {
        self.spec.body = Some(body);
        self
    }

    /// The group (default: the client's).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// When new versions are fetched (default: the server's, `remote_changed`).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// How many versions are kept.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Free-form notes kept with the resource (at most 4096 bytes), such
    /// as what it is for.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.notes.description = Some(description.into());
        self
    }

    /// A link kept with the resource (at most 4096 bytes), such as its
    /// ticket or dashboard.
    pub fn link(mut self, link: impl Into<String>) -> Self {
        self.notes.link = Some(link.into());
        self
    }

    /// Purge the resource's URL, and the cache tags of its new version, at
    /// the server's purge targets whenever a new version's body differs
    /// from the one before (the server needs `--purge-targets`).
    pub fn purge_on_change(mut self, purge_on_change: bool) -> Self {
        self.purge_on_change = Some(purge_on_change);
        self
    }

    /// Registers the resource, or finds it if it is registered already.
    /// With the server unreachable and fallback on, the handle still
    /// serves [`ResourceHandle::content`] from the origin, and registers
    /// when the server is back.
    pub async fn register(self) -> Result<ResourceHandle> {
        let body = registration(
            &self.client,
            &self.spec,
            self.group,
            self.strategy,
            self.limits,
            self.notes,
            self.purge_on_change,
        );
        let handle = ResourceHandle {
            client: self.client,
            id: Arc::default(),
            spec: Some(Arc::new(self.spec)),
            registration: Some(Arc::new(body)),
        };
        match handle.send_registration().await {
            Ok(_) => Ok(handle),
            Err(Error::Offline { .. }) => Ok(handle),
            Err(error) => Err(error),
        }
    }
}

/// The registration body the server takes.
pub(super) fn registration(
    client: &Client,
    spec: &RequestSpec,
    group: Option<String>,
    strategy: Option<Strategy>,
    limits: Option<Limits>,
    notes: Notes,
    purge_on_change: Option<bool>,
) -> Value {
    let body = Registration {
        method: Some(spec.method.as_str().to_owned()),
        url: spec.url.clone(),
        query: spec.query.clone(),
        headers: spec.headers.clone(),
        body: spec.body.clone(),
        group: Some(group.unwrap_or_else(|| client.inner.group.clone())),
        strategy,
        limits: limits.map(LimitsChange::from),
        description: notes.description,
        link: notes.link,
        purge_on_change,
    };
    serde_json::to_value(body).unwrap_or_default()
}

pub(super) async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let bytes = response.bytes().await.map_err(Error::Body)?;
    serde_json::from_slice(&bytes).map_err(|error| Error::Decode(error.to_string()))
}

/// A registered resource.
#[derive(Debug, Clone)]
pub struct ResourceHandle {
    pub(super) client: Client,
    /// Set once registered; shared by clones, so a handle registered
    /// late (after an outage) stays registered.
    pub(super) id: Arc<std::sync::OnceLock<String>>,
    pub(super) spec: Option<Arc<RequestSpec>>,
    /// The registration to send if the first attempt found the server
    /// unreachable.
    pub(super) registration: Option<Arc<Value>>,
}

/// Which versions [`ResourceHandle::versions`] lists.
#[derive(Debug, Clone, Default)]
pub struct VersionFilter {
    /// Only this status.
    pub status: Option<VersionStatus>,
    /// Only versions with this tag.
    pub tag: Option<String>,
    /// Only pinned (or unpinned) versions.
    pub pinned: Option<bool>,
}

impl ResourceHandle {
    /// The resource's id; `None` while it couldn't be registered (server
    /// unreachable).
    pub fn id(&self) -> Option<&str> {
        self.id.get().map(String::as_str)
    }

    /// Sends the registration (idempotent on the server) and keeps the id.
    async fn send_registration(&self) -> Result<String> {
        let body = self.registration.as_deref().ok_or_else(|| Error::Config {
            name: "resource".into(),
            message: "a handle made from an id can't register".into(),
        })?;
        let resource: Resource = self.client.json(Method::PUT, "v1/resources", &[], Some(body)).await?;
        Ok(self.id.get_or_init(|| resource.id).clone())
    }

    /// The id, registering first if an earlier attempt found the server
    /// unreachable.
    async fn ensure_id(&self) -> Result<String> {
        match self.id.get() {
            Some(id) => Ok(id.clone()),
            None => self.send_registration().await,
        }
    }

    pub(super) async fn path(&self, suffix: &str) -> Result<String> {
        let id = self.ensure_id().await?;
        Ok(format!("v1/resources/{id}{suffix}"))
    }

    /// The resource as the server has it now.
    pub async fn get(&self) -> Result<Resource> {
        self.client.json(Method::GET, &self.path("").await?, &[], None).await
    }

    /// Changes the strategy and limits (`None` keeps the current one);
    /// the server reschedules.
    pub async fn update(&self, strategy: Option<Strategy>, limits: Option<Limits>) -> Result<Resource> {
        self.change(Change {
            strategy,
            limits: limits.map(LimitsChange::from),
            purge_on_change: None,
        })
        .await
    }

    /// Changes what `change` gives (strategy, limits, purge on change) and
    /// keeps the rest; the server reschedules.
    ///
    /// ```no_run
    /// # async fn run(handle: edgecache_versions::ResourceHandle) -> edgecache_versions::Result<()> {
    /// use edgecache_versions::Change;
    /// handle.change(Change { purge_on_change: Some(true), ..Change::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn change(&self, change: Change) -> Result<Resource> {
        let body = serde_json::to_value(change).unwrap_or_default();
        self.client
            .json(Method::PATCH, &self.path("").await?, &[], Some(&body))
            .await
    }

    /// Deletes the resource and its versions. Without `force`, a pinned
    /// version makes this an [`Error::Conflict`].
    pub async fn delete(&self, force: bool) -> Result<()> {
        let path = self.path("").await?;
        let query = [("force".to_owned(), force.to_string())];
        let response = self
            .client
            .send(Method::DELETE, &path, &query, None)
            .await?
            .map_err(|reason| self.client.unreachable(reason))?;
        checked(response).await.map(drop)
    }

    /// Fetches now; answers the pending version (concurrent calls share it).
    pub async fn fetch_now(&self) -> Result<Version> {
        let path = self.path("/fetch").await?;
        let response = self
            .client
            .send(Method::POST, &path, &[], None)
            .await?
            .map_err(|reason| self.client.unreachable(reason))?;
        // 202 is this call's success.
        if response.status() == reqwest::StatusCode::ACCEPTED {
            return decode(response).await;
        }
        decode(checked(response).await?).await
    }

    /// The versions, newest first, every page.
    pub async fn versions(&self, filter: VersionFilter) -> Result<Vec<Version>> {
        let mut query = Vec::new();
        if let Some(status) = filter.status {
            query.push(("status".to_owned(), status.as_str().to_owned()));
        }
        if let Some(tag) = filter.tag {
            query.push(("tag".to_owned(), tag));
        }
        if let Some(pinned) = filter.pinned {
            query.push(("pinned".to_owned(), pinned.to_string()));
        }
        self.client.all_pages(&self.path("/versions").await?, query).await
    }

    /// A handle on one version (`latest` is the newest ready one).
    pub fn version(&self, id: impl Into<String>) -> VersionHandle {
        VersionHandle {
            resource: self.clone(),
            id: id.into(),
        }
    }

    /// The version `selection` picks, and its body. A resource just
    /// registered has none yet: this waits for the first (see
    /// [`ClientBuilder::default_wait`]). With the server unreachable and
    /// fallback on, the origin's answer instead ([`Source::Local`]).
    pub async fn content(&self, mut selection: Selection) -> Result<Content> {
        if selection.wait.is_none() {
            selection.wait = Some(self.client.inner.wait.as_secs());
        }
        let query = selection_query(&selection);
        let path = match self.path("/content").await {
            Ok(path) => path,
            Err(Error::Offline { .. }) => return self.local_content().await,
            Err(error) => return Err(error),
        };
        match self.client.send(Method::GET, &path, &query, None).await? {
            Ok(response) => {
                let response = checked(response).await?;
                let carried = response.headers().get(VERSION_METADATA).and_then(Version::from_header);
                let version = match carried {
                    Some(version) => version,
                    // A server that doesn't send it: ask.
                    None => {
                        let id = response
                            .headers()
                            .get("x-edgecache-version")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or("latest")
                            .to_owned();
                        self.version(id).get().await?
                    }
                };
                Ok(Content {
                    version,
                    source: Source::Server,
                    response,
                    url: self.spec.as_ref().map(|spec| spec.url.clone()),
                })
            }
            Err(reason) => match self.client.inner.local {
                Some(_) => self.local_content().await,
                None => Err(self.client.unreachable(reason)),
            },
        }
    }

    async fn local_content(&self) -> Result<Content> {
        let (Some(local), Some(spec)) = (&self.client.inner.local, &self.spec) else {
            return Err(self
                .client
                .unreachable("the resource's request is not known here".into()));
        };
        let url = crate::url_with_query(&spec.url, &spec.query).map_err(|error| Error::Config {
            name: "url".into(),
            message: error.to_string(),
        })?;
        let mut headers = crate::header_map(&spec.headers);
        let body = crate::encode_body(spec.body.as_ref(), &mut headers);
        let mut request = local.request(spec.method.clone(), url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(Error::Origin)?;
        let version = local_version(&response);
        Ok(Content {
            version,
            source: Source::Local,
            response,
            url: Some(spec.url.clone()),
        })
    }
}

/// What a local fetch looks like as a version: id `local`.
pub(super) fn local_version(response: &reqwest::Response) -> Version {
    let now = jiff::Timestamp::now();
    let mut version = Version::from_origin(
        "local".into(),
        response.status().as_u16(),
        response.headers(),
        |_| true,
        now,
    );
    version.fetched_at = Some(now);
    version.size = response.content_length();
    version
}

/// A selection as the server's query parameters.
pub(crate) fn selection_query(selection: &Selection) -> Vec<(String, String)> {
    let mut query = Vec::new();
    let mut add = |name: &str, value: String| query.push((name.to_owned(), value));
    if let Some(version) = &selection.force_version {
        add("force_version", version.clone());
    }
    if let Some(tag) = &selection.force_tag {
        add("force_tag", tag.clone());
    }
    if selection.force_pinned {
        add("force_pinned", "true".into());
    }
    if let Some(version) = &selection.prefer_version {
        add("prefer_version", version.clone());
    }
    if let Some(tag) = &selection.prefer_tag {
        add("prefer_tag", tag.clone());
    }
    if selection.prefer_pinned {
        add("prefer_pinned", "true".into());
    }
    if let Some(at) = selection.at {
        add("at", at.to_string());
    }
    if selection.fresh {
        add("fresh", "true".into());
    }
    if let Some(wait) = selection.wait {
        add("wait", wait.to_string());
    }
    query
}
