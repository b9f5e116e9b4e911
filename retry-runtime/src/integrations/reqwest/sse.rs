//! A provider's event stream over a plain `reqwest::Response`: [`sse`] reads the body as
//! server-sent events (with `eventsource-stream`) and each event as the providers write them
//! ([`StreamEvent`]), for a streaming `#[resilient]` call ([`Streamed`](crate::Streamed)).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use eventsource_stream::{EventStream, EventStreamError, Eventsource};
use futures_core::Stream;

use super::CallError;
use crate::integrations::http::{priced, StreamEvent, StreamEventError};
use crate::spend::{Spend, Usage};

type Body = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

/// One event of a provider's stream, read: its SSE fields and what it says.
#[derive(Debug, Clone)]
pub struct SseEvent {
    event: String,
    data: String,
    read: StreamEvent,
    spend: Spend,
}

impl SseEvent {
    /// The event's name: `message` when the stream names none (OpenAI), else Anthropic's
    /// `message_start`, `content_block_delta`, ….
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The event's data, as sent (a JSON chunk).
    pub fn data(&self) -> &str {
        &self.data
    }

    /// The text this event adds to the answer, if any.
    pub fn text(&self) -> Option<&str> {
        self.read.text.as_deref()
    }

    /// The tokens this event reports (see [`StreamEvent::usage`]).
    pub fn usage(&self) -> Option<Usage> {
        self.read.usage
    }

    /// What this event's usage costs at the stream's model's configured price (zero for an
    /// event with no usage): for [`Streamed::with_spend`](crate::Streamed::with_spend), as
    /// `with_spend(SseEvent::spend)`.
    pub fn spend(&self) -> Spend {
        self.spend
    }
}

/// The events of a provider's stream, from [`sse`].
///
/// It yields each event but keep-alive `ping`s, and ends:
/// - at OpenAI's `data: [DONE]` (not yielded), or with the body after Anthropic's
///   `message_stop` (yielded): the stream's last event;
/// - with an error item, once: the provider's error event ([`StreamEventError`], classified by
///   [`stream_event_class`](crate::integrations::http::stream_event_class): Anthropic's
///   `overloaded_error` is a 529); the connection failing or cut (`reqwest::Error`,
///   [`Transport`](crate::ErrorClass::Transport)); a body that ends before the last event
///   ([`StreamEventError::ended_early`], `Transport`: the cut fell between two events); bytes
///   that are not an event stream (`Other`).
pub struct SseStream {
    events: EventStream<Body>,
    model: Option<String>,
    last_seen: bool,
    ended: bool,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("model", &self.model)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Read `response`'s body as a provider's event stream (see [`SseStream`]). Give it a
/// successful response: a failed one is [`error_for_status`](super::error_for_status)'s.
///
/// ```no_run
/// use retry_runtime::integrations::http::stream_cut_bill;
/// use retry_runtime::integrations::reqwest::{error_for_status, sse, CallError, SseEvent, SseStream};
/// use retry_runtime::{resilient, retry_on, Streamed};
///
/// #[resilient(max = 3, first_token = "10s", idle = "30s")]
/// #[retry_on(429, 500..=599, timeout, transport)]
/// async fn chat(http: &reqwest::Client, body: &[u8]) -> Result<Streamed<SseStream>, CallError> {
///     let (prompt, per_chunk) = stream_cut_bill(body).unwrap_or_default();
///     let response = http
///         .post("https://api.openai.com/v1/chat/completions")
///         .header("content-type", "application/json")
///         .body(body.to_vec())
///         .send()
///         .await?;
///     let response = error_for_status(response).await?;
///     Ok(Streamed::new(sse(response))
///         .with_spend(SseEvent::spend)
///         .bill_if_cut(prompt, per_chunk))
/// }
/// ```
pub fn sse(response: reqwest::Response) -> SseStream {
    let body: Body = Box::pin(response.bytes_stream());
    SseStream {
        events: body.eventsource(),
        model: None,
        last_seen: false,
        ended: false,
    }
}

impl SseStream {
    fn end(&mut self, error: CallError) -> Poll<Option<Result<SseEvent, CallError>>> {
        self.ended = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for SseStream {
    type Item = Result<SseEvent, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let event = match ready!(Pin::new(&mut this.events).poll_next(cx)) {
                Some(Ok(event)) => event,
                Some(Err(EventStreamError::Transport(error))) => return this.end(error.into()),
                Some(Err(EventStreamError::Utf8(error))) => {
                    return this.end(StreamEventError::malformed(&error.to_string()).into())
                }
                Some(Err(EventStreamError::Parser(error))) => {
                    return this.end(StreamEventError::malformed(&error.to_string()).into())
                }
                None if this.last_seen => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                None => return this.end(StreamEventError::ended_early().into()),
            };
            // A keep-alive says nothing; yielded, it would commit the call before any output.
            if event.event == "ping" {
                continue;
            }
            let mut read = StreamEvent::read(&event.event, &event.data);
            if let Some(error) = read.error.take() {
                return this.end(error.into());
            }
            if let Some(model) = read.model.as_deref() {
                if this.model.as_deref() != Some(model) {
                    this.model = Some(model.to_owned());
                }
            }
            if read.last {
                this.last_seen = true;
                if event.data.trim() == "[DONE]" {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            }
            let spend = read.usage.map_or(Spend::ZERO, |usage| {
                priced(this.model.as_deref().unwrap_or("unknown"), usage)
            });
            return Poll::Ready(Some(Ok(SseEvent {
                event: event.event,
                data: event.data,
                read,
                spend,
            })));
        }
    }
}
