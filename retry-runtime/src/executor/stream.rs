//! Streaming calls: retry until the first chunk, never after.
//!
//! A `#[resilient]` function that returns `Result<Streamed<S>, E>` is a streaming call. Each
//! attempt runs the body (which opens the stream) and then waits for the stream's first chunk,
//! bounded by `first_token` (and the attempt's `timeout`, the call's `deadline`). Until that
//! chunk every rule applies as to any call: an error item, or no chunk in time, is the
//! attempt's failure, classified and retried. The first chunk **commits** the call: the caller
//! gets a stream that yields that chunk and the rest, and nothing after it is retried, so no
//! output is ever sent twice. What the attempt holds (the breaker's admission, a pacer permit,
//! pool and workflow reservations) is held until the stream ends, and its end is the attempt's
//! result: an error item or an `idle` gap (or the deadline) ends the stream with that error,
//! one failure for the breaker when its class says so, [`StopReason::StreamCut`] in the
//! report; the end of the stream is a success; a stream dropped before its end is
//! `Cancelled`. The spend of each chunk (see [`Streamed::with_spend`]) and of the failing
//! item settles the ledgers then, and the report (with its [`StreamReport`]) is delivered.
//!
//! [`StopReason::StreamCut`]: crate::StopReason::StreamCut
//! [`StreamReport`]: crate::StreamReport

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::{Stream, TryStream};
use tokio::time::{Instant, Sleep};

use super::call::{Call, Cut};

/// Which limit bounds the wait for a first chunk.
#[derive(Clone, Copy)]
enum Bound {
    FirstToken,
    Timeout,
    Deadline,
}
use crate::classify::{Classify, ErrorClass};
use crate::rejected::Rejected;
use crate::report::{StopReason, StreamReport};
use crate::spend::Spend;

/// A stream of chunks under a streaming `#[resilient]` call: return `Result<Streamed<S>, E>`
/// from the function, with `Ok(Streamed::new(stream))` in its body. `S` yields
/// `Result<Chunk, E>` (the function's own error type, so that a failing item is classified
/// like any error) and must be `Unpin` (`Box::pin` it if it is not).
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::{resilient, Classify, ErrorClass, Rejected, Streamed};
///
/// #[derive(Debug)]
/// enum LlmError { Cut, Runtime(Rejected) }
/// impl From<Rejected> for LlmError { fn from(r: Rejected) -> Self { LlmError::Runtime(r) } }
/// impl Classify for LlmError {
///     fn class(&self) -> ErrorClass {
///         match self { LlmError::Cut => ErrorClass::Transport, LlmError::Runtime(r) => r.class() }
///     }
/// }
///
/// type Chunks = std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<String, LlmError>> + Send>>;
///
/// #[resilient(max = 3, first_token = "10s", idle = "30s")]
/// async fn chat(words: Vec<&'static str>) -> Result<Streamed<Chunks>, LlmError> {
///     let chunks = words.into_iter().map(|w| Ok::<_, LlmError>(w.to_string()));
///     Ok(Streamed::new(Box::pin(tokio_stream_like(chunks)) as Chunks))
/// }
/// # fn tokio_stream_like<I: Iterator + Unpin>(i: I) -> impl futures_core::Stream<Item = I::Item> + Unpin {
/// #     struct It<I>(I);
/// #     impl<I: Iterator + Unpin> futures_core::Stream for It<I> {
/// #         type Item = I::Item;
/// #         fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<I::Item>> {
/// #             std::task::Poll::Ready(self.0.next())
/// #         }
/// #     }
/// #     It(i)
/// # }
/// ```
pub struct Streamed<S: TryStream> {
    inner: S,
    // The first chunk, held from the attempt that committed the call for the caller.
    first: Option<Result<S::Ok, S::Error>>,
    spend_of: Option<fn(&S::Ok) -> Spend>,
    // What a stream that ends before saying what it cost is charged: the prompt, and each
    // chunk received.
    cut_bill: (Spend, Spend),
    ended: bool,
    // The stream ended before a first chunk: nothing to poll again.
    empty: bool,
    // Once committed under a call: what the call still has to do when the stream ends.
    tail: Option<Box<Tail>>,
    // What to do when the stream is cut: open a stream that continues it.
    on_cut: Option<OnCut<S>>,
    continuing: Option<Continuation<S>>,
}

/// A stream that continues a cut one, being opened.
type Continuation<S> =
    Pin<Box<dyn Future<Output = Result<S, <S as TryStream>::Error>> + Send + 'static>>;

/// The hook of [`Streamed::on_cut`].
type OnCut<S> =
    Box<dyn FnMut(&<S as TryStream>::Error, u64) -> Option<Continuation<S>> + Send + 'static>;

// No field is pinned structurally: `inner` is `Unpin` (required where it is polled), and the
// held chunk is moved out by value.
impl<S: TryStream> Unpin for Streamed<S> {}

impl<S: TryStream> std::fmt::Debug for Streamed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("chunks", &self.tail.as_ref().map_or(0, |t| t.chunks))
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

struct Tail {
    call: Call<'static>,
    chunks: u64,
    spend: Spend,
    // The chunk count at the last chunk that said what it cost.
    priced_at: u64,
    first_at: Instant,
    // Time from the attempt's start to its first chunk: the attempt's latency, for the
    // breaker's regime (a long answer is not a slow provider).
    to_first: Duration,
    idle: Option<Duration>,
    deadline: Option<Instant>,
    // The next of: the idle gap's end, the call's deadline. One allocation per stream.
    timer: Option<Pin<Box<Sleep>>>,
    // The chunk count when the timer was last set: it is set again only when the stream goes
    // quiet after new chunks (a chunk itself touches no clock and no timer).
    armed_at: u64,
}

impl<S: TryStream> Streamed<S> {
    /// The stream a streaming call's body opened.
    pub fn new(stream: S) -> Self {
        Self {
            inner: stream,
            first: None,
            spend_of: None,
            cut_bill: (Spend::ZERO, Spend::ZERO),
            ended: false,
            empty: false,
            tail: None,
            on_cut: None,
            continuing: None,
        }
    }

    /// When the committed stream is cut (an error item), call `hook` with the error and the
    /// number of chunks delivered; a future it returns opens a stream that **continues** the
    /// answer (the same model with the delivered text as a prefill, another model: yours to
    /// say). Its chunks follow the delivered ones, nothing is repeated. Each continuation is
    /// one more attempt of the call, within its `max`; `None`, or `max` reached, or a
    /// continuation that fails to open, ends the stream with the error as without a hook.
    /// The report shows the continued attempt's cut; the breaker, pacer and ledgers see the
    /// stream's final end, as one attempt's result.
    pub fn on_cut<F, Fut>(mut self, mut hook: F) -> Self
    where
        F: FnMut(&S::Error, u64) -> Option<Fut> + Send + 'static,
        Fut: Future<Output = Result<S, S::Error>> + Send + 'static,
    {
        self.on_cut = Some(Box::new(move |error: &S::Error, chunks: u64| {
            hook(error, chunks).map(|fut| Box::pin(fut) as Continuation<S>)
        }));
        self
    }

    /// What each chunk cost, summed into the call's spend when the stream ends (and settled
    /// in its pool and workflow): for a provider that sends usage in a final chunk, that
    /// chunk's cost, zero for the others.
    pub fn with_spend(mut self, spend_of: fn(&S::Ok) -> Spend) -> Self {
        self.spend_of = Some(spend_of);
        self
    }

    /// What the call is charged if its stream is cut (or dropped) before its end: `prompt`
    /// (the provider started on it) plus `per_chunk` for each chunk received; if chunks said
    /// what they cost ([`with_spend`](Self::with_spend)), that, plus `per_chunk` for each chunk
    /// after the last of them.
    /// With async-openai, `integrations::openai::stream_cut_bill` (feature `async-openai`)
    /// gives both for a request.
    pub fn bill_if_cut(mut self, prompt: Spend, per_chunk: Spend) -> Self {
        self.cut_bill = (prompt, per_chunk);
        self
    }

    /// Chunks yielded to the caller so far.
    pub fn chunks(&self) -> u64 {
        self.tail.as_ref().map_or(0, |t| t.chunks)
    }
}

/// When a quiet stream is over: the idle gap's end from now, or the deadline, whichever
/// comes first (`None`: neither is set).
fn next_timeout(idle: Option<Duration>, deadline: Option<Instant>) -> Option<Instant> {
    let gap = idle.map(|idle| Instant::now() + idle);
    match (gap, deadline) {
        (Some(gap), Some(deadline)) => Some(gap.min(deadline)),
        (gap, deadline) => gap.or(deadline),
    }
}

impl Tail {
    /// A stream that ended early: charged what its chunks said they cost, plus `per_chunk` for
    /// each chunk after the last one that said so (a provider that reports the prompt's tokens
    /// first, as Anthropic does, has not said what the output cost); with no chunk that said
    /// anything, the prompt and `per_chunk` for each chunk.
    fn bill_cut(&mut self, (prompt, per_chunk): (Spend, Spend)) {
        let per_chunks = |n: u64| {
            Spend::new(
                per_chunk.micros().saturating_mul(n),
                per_chunk.tokens().saturating_mul(n),
            )
        };
        if self.spend.is_zero() {
            self.spend = prompt + per_chunks(self.chunks);
        } else {
            self.spend += per_chunks(self.chunks - self.priced_at);
        }
    }

    #[inline]
    fn note_chunk<T>(&mut self, spend_of: Option<fn(&T) -> Spend>, chunk: &T) {
        self.chunks += 1;
        if let Some(spend_of) = spend_of {
            let spend = spend_of(chunk);
            if !spend.is_zero() {
                self.spend += spend;
                self.priced_at = self.chunks;
            }
        }
    }

    /// The stream went quiet: an idle gap starts now if chunks came since the timer was set.
    fn arm(&mut self) {
        if self.armed_at == self.chunks {
            return;
        }
        self.armed_at = self.chunks;
        if let (Some(_), Some(at), Some(timer)) = (
            self.idle,
            next_timeout(self.idle, self.deadline),
            self.timer.as_mut(),
        ) {
            timer.as_mut().reset(at);
        }
    }

    /// When the attempt "started", for the regime: its latency is its time to the first
    /// chunk (a long answer is not a slow provider).
    fn attempt_started(&self) -> Instant {
        Instant::now()
            .checked_sub(self.to_first)
            .unwrap_or_else(Instant::now)
    }

    /// The stream is over: record it as the attempt's result and deliver the report.
    fn end(&mut self, failure: Option<ErrorClass>, stop: StopReason) {
        let started = self.attempt_started();
        let call = &mut self.call;
        call.end_stream(
            failure,
            self.spend,
            started,
            stop,
            StreamReport {
                first_chunk: self.first_at.saturating_duration_since(call.started),
                chunks: self.chunks,
                streamed: self.first_at.elapsed(),
            },
        );
    }
}

impl<S, T, E> Stream for Streamed<S>
where
    S: TryStream<Ok = T, Error = E> + Stream<Item = Result<T, E>> + Unpin,
    E: Classify + From<Rejected>,
{
    type Item = Result<T, E>;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            if let (Some(tail), Ok(chunk)) = (this.tail.as_mut(), &first) {
                tail.note_chunk(this.spend_of, chunk);
            }
            return Poll::Ready(Some(first));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        if this.empty {
            this.ended = true;
            if let Some(mut tail) = this.tail.take() {
                tail.end(None, StopReason::Success);
            }
            return Poll::Ready(None);
        }
        loop {
            if let Some(opening) = this.continuing.as_mut() {
                match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => {
                        this.continuing = None;
                        this.inner = stream;
                    }
                    Poll::Ready(Err(error)) => {
                        this.continuing = None;
                        return this.cut(error);
                    }
                }
            }
            return match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(tail) = this.tail.as_mut() {
                        tail.note_chunk(this.spend_of, &chunk);
                    }
                    Poll::Ready(Some(Ok(chunk)))
                }
                Poll::Ready(Some(Err(error))) => {
                    if let Some(opening) = this.continuation(&error) {
                        this.continuing = Some(opening);
                        continue;
                    }
                    this.cut(error)
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if let Some(mut tail) = this.tail.take() {
                        tail.end(None, StopReason::Success);
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => this.pending(cx),
            };
        }
    }
}

impl<S, T, E> Streamed<S>
where
    S: TryStream<Ok = T, Error = E> + Stream<Item = Result<T, E>> + Unpin,
    E: Classify + From<Rejected>,
{
    /// The stream is cut by `error`: its end, and the error for the caller.
    fn cut(&mut self, error: E) -> Poll<Option<Result<T, E>>> {
        self.ended = true;
        if let Some(mut tail) = self.tail.take() {
            let class = error.class();
            tail.bill_cut(self.cut_bill);
            tail.spend += error.spend();
            let chunks = tail.chunks;
            tail.end(Some(class), StopReason::StreamCut { chunks, class });
        }
        Poll::Ready(Some(Err(error)))
    }

    /// A continuation of the cut stream, if the hook gives one, the call has attempts left
    /// (it is one of them) and the breaker, told of the cut, admits it.
    fn continuation(&mut self, error: &E) -> Option<Continuation<S>> {
        let tail = self.tail.as_mut()?;
        if tail.call.attempts >= tail.call.policy.max_attempts() {
            return None;
        }
        let opening = (self.on_cut.as_mut()?)(error, tail.chunks)?;
        // A refused continuation is dropped unpolled: nothing was sent.
        tail.call
            .continue_stream(error.class(), tail.attempt_started())
            .then_some(opening)
    }

    /// The inner stream has nothing yet: is the idle gap, or the deadline, over?
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, E>>> {
        let Some(tail) = self.tail.as_mut() else {
            return Poll::Pending;
        };
        tail.arm();
        let Some(timer) = tail.timer.as_mut() else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The idle gap or the deadline: which came first says which error. Either ends the
        // stream as a cut by a `Timeout`-class error (what `Rejected` says of both).
        let deadline_passed = tail.deadline.is_some_and(|d| Instant::now() >= d);
        let error = match tail.idle {
            Some(idle) if !deadline_passed => Rejected::StreamIdle { idle },
            _ => Rejected::DeadlineExceeded {
                deadline: tail.call.policy.deadline().unwrap_or_default(),
            },
        };
        self.cut(E::from(error))
    }
}

impl<S: TryStream> crate::spend::Metered for Streamed<S> {
    fn spend(&self) -> Spend {
        Spend::ZERO
    }
}

impl<S: TryStream> Drop for Streamed<S> {
    fn drop(&mut self) {
        // Dropped before its end: the caller stopped reading. Not a failure; what it used is
        // settled, and the report says so.
        if let Some(mut tail) = self.tail.take() {
            tail.bill_cut(self.cut_bill);
            tail.end(None, StopReason::Cancelled);
        }
    }
}

impl Call<'static> {
    /// A streaming attempt's outcome: wait for the stream's first chunk, within the attempt's
    /// `first_token` (and `timeout`, and the call's `deadline`). The first chunk commits the
    /// call; an error item, or no chunk in time, is the attempt's failure.
    pub async fn first_chunk<S, T, E>(
        &mut self,
        outcome: Result<Streamed<S>, E>,
    ) -> Result<Streamed<S>, E>
    where
        S: TryStream<Ok = T, Error = E> + Stream<Item = Result<T, E>> + Unpin,
        E: From<Rejected>,
    {
        let mut streamed = outcome?;
        let policy = self.policy;
        let bounds = [
            policy
                .first_token()
                .map(|t| (self.attempt_started + t, Bound::FirstToken)),
            policy
                .timeout()
                .map(|t| (self.attempt_started + t, Bound::Timeout)),
            policy
                .deadline()
                .map(|d| (self.started + d, Bound::Deadline)),
        ];
        let bound = bounds.into_iter().flatten().min_by_key(|(at, _)| *at);
        let next = std::future::poll_fn(|cx| Pin::new(&mut streamed.inner).poll_next(cx));
        let first = match bound {
            None => next.await,
            Some((at, cut)) => match tokio::time::timeout_at(at, next).await {
                Ok(first) => first,
                Err(_) => {
                    self.cut = Some(match cut {
                        Bound::Deadline => Cut::Deadline,
                        Bound::FirstToken | Bound::Timeout => Cut::Timeout,
                    });
                    return Err(E::from(match cut {
                        Bound::FirstToken => Rejected::FirstTokenTimedOut {
                            first_token: policy.first_token().unwrap_or_default(),
                        },
                        Bound::Timeout => Rejected::AttemptTimedOut {
                            timeout: policy.timeout().unwrap_or_default(),
                        },
                        Bound::Deadline => Rejected::DeadlineExceeded {
                            deadline: policy.deadline().unwrap_or_default(),
                        },
                    }));
                }
            },
        };
        match first {
            Some(Err(error)) => Err(error),
            Some(Ok(chunk)) => {
                streamed.first = Some(Ok(chunk));
                self.cold().committed = Some(Instant::now());
                self.first_chunk_came();
                Ok(streamed)
            }
            // An empty stream: committed, and over at once when read.
            None => {
                streamed.empty = true;
                self.cold().committed = Some(Instant::now());
                Ok(streamed)
            }
        }
    }

    /// The call is over for the function: a committed stream takes the call with it (its
    /// report is delivered when the stream ends); anything else is [`Call::done`].
    pub fn done_stream<S: TryStream, E>(
        mut self,
        result: Result<Streamed<S>, E>,
    ) -> Result<Streamed<S>, E> {
        match (result, self.committed()) {
            (Ok(mut streamed), Some(first_at)) => {
                let policy = self.policy;
                let deadline = policy.deadline().map(|d| self.started + d);
                let idle = policy.idle();
                let first_timer = next_timeout(idle, deadline);
                let to_first = first_at.saturating_duration_since(self.attempt_started);
                streamed.tail = Some(Box::new(Tail {
                    call: self,
                    chunks: 0,
                    spend: Spend::ZERO,
                    priced_at: 0,
                    first_at,
                    to_first,
                    idle,
                    deadline,
                    timer: first_timer.map(|at| Box::pin(tokio::time::sleep_until(at))),
                    armed_at: 0,
                }));
                Ok(streamed)
            }
            (result, _) => self.done(result),
        }
    }
}
