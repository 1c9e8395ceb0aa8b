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
    copy: Pieces,
    limit: usize,
    done: Box<dyn FnOnce(Option<Bytes>) + Send + Sync>,
}

impl Recorder {
    /// A recorder that already holds `read`, the part of the body read so
    /// far; `None`, having handed over nothing, when that is over the limit.
    pub(crate) fn new(
        read: Bytes,
        limit: usize,
        done: impl FnOnce(Option<Bytes>) + Send + Sync + 'static,
    ) -> Option<Self> {
        if read.len() > limit {
            done(None);
            return None;
        }
        Some(Self {
            copy: Pieces::new(read),
            limit,
            done: Box::new(done),
        })
    }

    fn record(recorder: &mut Option<Recorder>, data: &Bytes) {
        let Some(recording) = recorder else { return };
        if recording.copy.len.saturating_add(data.len()) > recording.limit {
            if let Some(recording) = recorder.take() {
                (recording.done)(None);
            }
        } else {
            recording.copy.push(data.clone());
        }
    }

    fn finish(recorder: &mut Option<Recorder>) {
        if let Some(recording) = recorder.take() {
            (recording.done)(Some(recording.copy.join()));
        }
    }
}

/// The pieces of a body as they came, joined once at the end into a buffer
/// of the right size: a body that came in one piece is not copied at all,
/// and a large one is copied once instead of on every growth of a buffer.
#[derive(Default)]
struct Pieces {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Pieces {
    fn new(first: Bytes) -> Self {
        let mut pieces = Self::default();
        pieces.push(first);
        pieces
    }

    fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len = self.len.saturating_add(piece.len());
            self.pieces.push(piece);
        }
    }

    fn join(mut self) -> Bytes {
        if self.pieces.len() <= 1 {
            return self.pieces.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(self.len);
        for piece in &self.pieces {
            joined.extend_from_slice(piece);
        }
        joined.freeze()
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
    pub(crate) fn recording(prefix: Bytes, inner: B, recorder: Option<Recorder>) -> Self {
        Self {
            kind: Kind::Streaming {
                prefix: (!prefix.is_empty()).then_some(prefix),
                inner,
                recorder,
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
    let mut read = Pieces::default();
    while let Some(frame) = body.frame().await {
        // Trailers are not kept: a cached response has none.
        if let Ok(data) = frame?.into_data() {
            let outgrown = read.len.saturating_add(data.len()) > limit;
            read.push(data);
            if outgrown {
                return Ok(Collected::TooLarge(read.join(), body));
            }
        }
    }
    Ok(Collected::Complete(read.join()))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http_body_util::StreamBody;
    use proptest::prelude::*;

    use super::*;

    /// A body that comes in `pieces`, as an origin's does, one frame each.
    fn body_in(pieces: &[Vec<u8>]) -> impl Body<Data = Bytes, Error = Infallible> + Unpin + use<> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = pieces
            .iter()
            .map(|piece| Ok(Frame::data(Bytes::from(piece.clone()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    proptest! {
        /// Whatever pieces a body comes in: read whole within the limit,
        /// else passed on whole, and recorded whole unless it outgrows the
        /// recorder's limit.
        #[test]
        fn a_body_in_any_pieces_is_read_passed_on_and_recorded_whole(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10),
            read_limit in 0usize..200,
            record_limit in 0usize..400,
        ) {
            let whole: Vec<u8> = pieces.concat();
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            runtime.block_on(async {
                match collect_limited(body_in(&pieces), read_limit).await {
                    Ok(Collected::Complete(read)) => {
                        prop_assert!(whole.len() <= read_limit);
                        prop_assert_eq!(&read[..], &whole[..]);
                    }
                    Ok(Collected::TooLarge(read, rest)) => {
                        prop_assert!(read.len() > read_limit);
                        prop_assert!(whole.starts_with(&read));
                        let recorded = Arc::new(Mutex::new(None));
                        let handed_over = Arc::clone(&recorded);
                        let recorder = Recorder::new(read.clone(), record_limit, move |copy| {
                            *handed_over.lock().expect("lock") = Some(copy);
                        });
                        let passed_on = CacheBody::recording(read, rest, recorder)
                            .collect()
                            .await
                            .expect("body")
                            .to_bytes();
                        prop_assert_eq!(&passed_on[..], &whole[..]);
                        let recorded = recorded.lock().expect("lock").take().expect("handed over at the end");
                        match recorded {
                            Some(copy) => {
                                prop_assert!(whole.len() <= record_limit);
                                prop_assert_eq!(&copy[..], &whole[..]);
                            }
                            None => prop_assert!(whole.len() > record_limit),
                        }
                    }
                    Err(never) => match never {},
                }
                Ok(())
            })?;
        }
    }
}
