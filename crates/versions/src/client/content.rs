//! A selected version's body: read, streamed, or saved under a safe file
//! name.

use super::*;

/// A selected version and its body, not yet read.
#[derive(Debug)]
pub struct Content {
    pub(super) version: Version,
    pub(super) source: Source,
    pub(super) response: reqwest::Response,
    pub(super) url: Option<String>,
}

impl Content {
    /// The version served (id `local` for a local fallback).
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Where the body comes from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The response's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The whole body in memory.
    pub async fn bytes(self) -> Result<Bytes> {
        self.response.bytes().await.map_err(Error::Body)
    }

    /// The body as it arrives.
    pub fn bytes_stream(self) -> impl Stream<Item = Result<Bytes>> + Send {
        futures_util::stream::try_unfold(self.response, |mut response| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => Ok(Some((chunk, response))),
                Ok(None) => Ok(None),
                Err(error) => Err(Error::Body(error)),
            }
        })
    }

    /// The underlying response, for what the other methods don't cover.
    pub fn into_response(self) -> reqwest::Response {
        self.response
    }

    /// Streams the body to `path` (a temporary file beside it, renamed
    /// when complete, so `path` never holds half a body). Answers the bytes
    /// written.
    pub async fn download_to(mut self, path: impl AsRef<Path>) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partial = path.with_file_name(format!(".{file_name}.{}.partial", uuid::Uuid::new_v4().simple()));
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut written = 0u64;
        let result: Result<()> = async {
            while let Some(chunk) = self.response.chunk().await.map_err(Error::Body)? {
                file.write_all(&chunk).await.map_err(io)?;
                written = written.saturating_add(chunk.len() as u64);
            }
            file.flush().await.map_err(io)?;
            file.sync_all().await.map_err(io)?;
            tokio::fs::rename(&partial, path).await.map_err(io)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result.map(|()| written)
    }

    /// Streams the body into `dir`, naming the file from
    /// `Content-Disposition`, else the URL's last segment, else the media
    /// type (`download.csv`). Answers the file's path.
    pub async fn download_to_dir(self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let name = file_name(
            self.response.headers(),
            self.url.as_deref(),
            self.version.media_type.as_deref(),
        );
        let path = dir.as_ref().join(name);
        self.download_to(&path).await?;
        Ok(path)
    }
}

/// A safe file name for a body: no directories, no dot-only names.
pub(crate) fn file_name(headers: &HeaderMap, url: Option<&str>, media_type: Option<&str>) -> String {
    let from_disposition = headers
        .get(http::header::CONTENT_DISPOSITION)
        .and_then(|value| value.to_str().ok())
        .and_then(disposition_file_name);
    let from_url = url
        .and_then(|url| Url::parse(url).ok())
        .and_then(|url| url.path_segments()?.next_back().map(str::to_owned))
        .map(|segment| {
            percent_encoding::percent_decode_str(&segment)
                .decode_utf8_lossy()
                .into_owned()
        });
    let candidate = [from_disposition, from_url]
        .into_iter()
        .flatten()
        .map(|name| sanitize(&name))
        .find(|name| !name.is_empty());
    candidate.unwrap_or_else(|| {
        let essence = media_type
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let extension = match essence {
            "text/csv" => "csv",
            "application/json" => "json",
            "text/plain" => "txt",
            "text/html" => "html",
            "application/xml" | "text/xml" => "xml",
            "application/pdf" => "pdf",
            "application/zip" => "zip",
            "application/gzip" => "gz",
            _ => "bin",
        };
        format!("download.{extension}")
    })
}

pub(super) fn disposition_file_name(value: &str) -> Option<String> {
    let mut plain = None;
    for part in value.split(';').map(str::trim) {
        let Some((name, raw)) = part.split_once('=') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            // RFC 6266 / 8187: filename*=UTF-8''encoded wins.
            "filename*" => {
                let encoded = raw.trim().splitn(3, '\'').nth(2)?;
                return Some(
                    percent_encoding::percent_decode_str(encoded)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            }
            "filename" => plain = Some(raw.trim().trim_matches('"').to_owned()),
            _ => {}
        }
    }
    plain
}

pub(super) fn sanitize(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() { String::new() } else { cleaned }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disposition(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_DISPOSITION, value.parse().unwrap());
        headers
    }

    #[test]
    fn file_names_come_from_the_disposition_the_url_or_the_type_and_stay_in_the_directory() {
        assert_eq!(
            file_name(&disposition("attachment; filename=\"r.csv\""), None, None),
            "r.csv"
        );
        assert_eq!(
            file_name(
                &disposition("attachment; filename=\"x\"; filename*=UTF-8''caf%C3%A9.txt"),
                None,
                None
            ),
            "café.txt"
        );
        assert_eq!(
            file_name(&disposition("attachment; filename=\"../../etc/passwd\""), None, None),
            "passwd"
        );
        assert_eq!(
            file_name(&HeaderMap::new(), Some("https://e.org/a/data%20set.csv?x=1"), None),
            "data set.csv"
        );
        assert_eq!(
            file_name(
                &HeaderMap::new(),
                Some("https://e.org/"),
                Some("text/csv; charset=utf-8")
            ),
            "download.csv"
        );
        assert_eq!(
            file_name(
                &disposition("attachment; filename=\"..\""),
                Some("https://e.org/"),
                None
            ),
            "download.bin"
        );
    }

    #[test]
    fn the_fallback_variable_is_strict() {
        assert!(strict_bool("V", "true").unwrap() && !strict_bool("V", "0").unwrap());
        let error = strict_bool("EDGECACHE_LOCAL_FALLBACK", "flase").unwrap_err();
        assert!(error.to_string().contains("EDGECACHE_LOCAL_FALLBACK") && error.to_string().contains("flase"));
    }

    proptest::proptest! {
        #[test]
        fn any_disposition_gives_a_plain_file_name(value in "[ -~]{0,80}") {
            if let Ok(value) = HeaderValue::from_str(&value) {
                let mut headers = HeaderMap::new();
                headers.insert(http::header::CONTENT_DISPOSITION, value);
                let name = file_name(&headers, None, None);
                proptest::prop_assert!(!name.is_empty() && !name.contains('/') && !name.contains('\\') && !name.starts_with('.'));
            }
        }
    }
}
