//! The one driver of a [`Plan`]. Each adapter describes its transport (how
//! to send a request, and how the engine's answers become its responses);
//! what happens in which case is decided here, once.

use std::future::Future;

use super::*;

/// What the driver needs of an adapter: sending its request, and turning
/// the engine's answers into its responses.
pub(crate) trait Transport: Sized + Send {
    /// The body of the origin's responses.
    type Body: Body<Data = Bytes> + Unpin + Send + 'static;
    /// What the adapter answers with.
    type Response;
    /// Why a request failed.
    type Error;
    /// What building a response needs once the request has been sent.
    type Reply: Send;

    /// Keeps what [`Transport::Reply`] needs before the request goes.
    fn reply(&self) -> Self::Reply;
    /// Adds a fetch's conditional headers to the request.
    fn add_headers(&mut self, headers: &HeaderMap);
    /// Sends the request.
    fn send(self) -> impl Future<Output = Result<http::Response<Self::Body>, Self::Error>> + Send;
    /// Sends the request in the background and hands the response to
    /// [`Engine::finish`]: a refresh nobody waits for.
    fn refresh(self, engine: Arc<Engine>, fetch: Box<Fetch>);
    /// An answer from the cache, while the request is still at hand (the
    /// hit path: nothing is kept for later).
    fn answer_now(&self, answer: Answer) -> Self::Response;
    /// An answer from the cache after the request was sent (a stale one,
    /// when sending failed).
    fn answer(reply: &Self::Reply, answer: Answer) -> Self::Response;
    /// A response the cache let through, its report in its extensions.
    fn passed(reply: &Self::Reply, response: http::Response<Self::Body>) -> Self::Response;
    /// A fetched response, as the engine finished it.
    fn fetched(reply: &Self::Reply, response: http::Response<CacheBody<Self::Body>>) -> Self::Response;
    /// Reading a fetched body failed.
    fn body_error(reply: &Self::Reply, error: <Self::Body as Body>::Error) -> Self::Error;
}

impl Engine {
    /// Counts an answer and notes it on the request's span: called once per
    /// answer a caller gets, here and nowhere else.
    pub(super) fn answered(&self, info: &CacheInfo) {
        crate::metrics::answered(info);
        crate::trace::outcome(info.status.as_str(), info.forward_status.map(|status| status.as_u16()));
    }

    /// Carries out `plan` over `transport`.
    pub(crate) async fn drive<T: Transport>(
        self: &Arc<Self>,
        plan: Plan,
        mut transport: T,
    ) -> Result<T::Response, T::Error> {
        let (key, decision) = plan.decision();
        crate::trace::decision(key, decision);
        match plan {
            Plan::Respond(answer) => {
                self.answered(&answer.info);
                Ok(transport.answer_now(answer))
            }
            Plan::RespondAndRefresh(answer, fetch) => {
                self.answered(&answer.info);
                let response = transport.answer_now(answer);
                transport.add_headers(fetch.conditional_headers());
                transport.refresh(Arc::clone(self), fetch);
                Ok(response)
            }
            Plan::Pass(pass) => {
                let reply = transport.reply();
                let mut response = transport.send().await?;
                let info = self.after_pass(pass, response.status(), response.headers()).await;
                self.mark(response.headers_mut(), &info);
                self.answered(&info);
                response.extensions_mut().insert(info);
                Ok(T::passed(&reply, response))
            }
            Plan::Fetch(fetch) => {
                transport.add_headers(fetch.conditional_headers());
                let reply = transport.reply();
                let response = match transport.send().await {
                    Ok(response) => response,
                    Err(error) => {
                        return match self.fetch_failed(&fetch) {
                            Some(stale) => {
                                self.answered(&stale.info);
                                Ok(T::answer(&reply, stale))
                            }
                            None => {
                                crate::trace::outcome("error", None);
                                Err(error)
                            }
                        };
                    }
                };
                // Boxed: inline, its state would make every hit's future kilobytes larger.
                let finished = Box::pin(self.finish(fetch, response)).await;
                match finished {
                    Ok(response) => {
                        if let Some(info) = response.extensions().get::<CacheInfo>() {
                            self.answered(info);
                        }
                        Ok(T::fetched(&reply, response))
                    }
                    Err(error) => Err(T::body_error(&reply, error)),
                }
            }
        }
    }
}
