//! The response body the cache hands back: stored bytes, or the origin's
//! body streaming through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

pin_project! {
    /// A response body from [`CacheService`](crate::CacheService): either
    /// bytes from the cache, or the origin's body passed through (after any
    /// part of it the cache already read).
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Full { data: Option<Bytes> },
        Streaming { prefix: Option<Bytes>, #[pin] inner: B, recorder: Option<Recorder> },
    }
}

/// Keeps a copy of a body as it streams, up to a limit, and hands the copy
/// over when the body ends: `Some` with the whole body, or `None` once it
/// outgrew the limit. A body dropped before its end hands over nothing.
pub(crate) struct Recorder {
    copy: BytesMut,
    limit: usize,
    done: Box<dyn FnOnce(Option<Bytes>) + Send + Sync>,
}

impl Recorder {
    /// A recorder that already holds `read`, the part of the body read so far.
    pub(crate) fn new(read: &Bytes, limit: usize, done: impl FnOnce(Option<Bytes>) + Send + Sync + 'static) -> Self {
        Self {
            copy: BytesMut::from(&read[..]),
            limit,
            done: Box::new(done),
        }
    }

    fn record(recorder: &mut Option<Recorder>, data: &Bytes) {
        let Some(recording) = recorder else { return };
        if recording.copy.len().saturating_add(data.len()) > recording.limit {
            if let Some(recording) = recorder.take() {
                (recording.done)(None);
            }
        } else {
            recording.copy.extend_from_slice(data);
        }
    }

    fn finish(recorder: &mut Option<Recorder>) {
        if let Some(recording) = recorder.take() {
            (recording.done)(Some(recording.copy.freeze()));
        }
    }
}

impl<B> CacheBody<B> {
    /// A complete in-memory body.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn streaming(prefix: Bytes, inner: B) -> Self {
        Self {
            kind: Kind::Streaming {
                prefix: (!prefix.is_empty()).then_some(prefix),
                inner,
                recorder: None,
            },
        }
    }

    /// `prefix` then `inner`, passed on as they come, with `recorder`
    /// keeping a copy (it already holds `prefix`).
    pub(crate) fn recording(prefix: Bytes, inner: B, recorder: Recorder) -> Self {
        Self {
            kind: Kind::Streaming {
                prefix: (!prefix.is_empty()).then_some(prefix),
                inner,
                recorder: Some(recorder),
            },
        }
    }

    /// The whole body if it is held in memory; otherwise the body itself.
    pub fn into_bytes(self) -> Result<Bytes, Self> {
        match self.kind {
            Kind::Full { data } => Ok(data.unwrap_or_default()),
            kind => Err(Self { kind }),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProjection::Full { data } => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            KindProjection::Streaming {
                prefix,
                mut inner,
                recorder,
            } => {
                if let Some(prefix) = prefix.take() {
                    if inner.is_end_stream() {
                        Recorder::finish(recorder);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                let polled = inner.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            Recorder::record(recorder, data);
                        }
                        // Readers may stop polling once the body says it ended.
                        if inner.is_end_stream() {
                            Recorder::finish(recorder);
                        }
                    }
                    Poll::Ready(None) => Recorder::finish(recorder),
                    Poll::Ready(Some(Err(_))) => drop(recorder.take()),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Streaming { prefix, inner, .. } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64)),
            Kind::Streaming { prefix, inner, .. } => {
                let prefix_len = prefix.as_ref().map_or(0, |prefix| prefix.len() as u64);
                let inner_hint = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner_hint.lower() + prefix_len);
                if let Some(upper) = inner_hint.upper() {
                    hint.set_upper(upper + prefix_len);
                }
                hint
            }
        }
    }
}

/// A body read up to a limit.
pub(crate) enum Collected<B> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The body outgrew the limit: what was read, and the rest unread.
    TooLarge(Bytes, B),
}

/// Reads `body` whole if it fits in `limit` bytes; otherwise stops reading
/// and hands back what was read and the rest, so large responses pass
/// through without being buffered whole.
pub(crate) async fn collect_limited<B>(mut body: B, limit: usize) -> Result<Collected<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers are not kept: a cached response has none.
        if let Ok(data) = frame?.into_data() {
            if buffer.len() + data.len() > limit {
                buffer.extend_from_slice(&data);
                return Ok(Collected::TooLarge(buffer.freeze(), body));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(Collected::Complete(buffer.freeze()))
}
