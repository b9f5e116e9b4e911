//! The providers' event streams (server-sent events): what an event says, read once.
//!
//! OpenAI's chat stream sends `data: {chunk}` events and ends with `data: [DONE]`; a failure
//! mid-stream is a `data: {"error": {…}}` event. Anthropic's sends named events
//! (`message_start`, `content_block_delta`, `message_delta`, `message_stop`, `ping`) and a
//! failure mid-stream as `event: error` with `{"type": "error", "error": {"type":
//! "overloaded_error", …}}`. [`StreamEvent::read`] reads an event's name and data into what the
//! runtime needs from it (its text, its usage and model, whether it ends the stream or is an
//! error) in one pass over the JSON, and [`stream_event_class`] applies the providers' rules to
//! an error event.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

use super::class_from_texts;
use crate::classify::{Classify, ErrorClass};
use crate::spend::Usage;

/// What one event of a provider's stream says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StreamEvent {
    /// The text this event adds to the answer: OpenAI's `choices[0].delta.content`,
    /// Anthropic's `content_block_delta` `delta.text`.
    pub text: Option<String>,
    /// The tokens this event reports, to be added to the ones before it: OpenAI's final
    /// `usage` chunk (prompt and completion); Anthropic's `message_start` (its input tokens)
    /// and `message_delta` (its output tokens, which Anthropic counts from the start of the
    /// message: the stream's one `message_delta` carries them all).
    pub usage: Option<Usage>,
    /// The model the event names (each OpenAI chunk; Anthropic's `message_start`).
    pub model: Option<String>,
    /// The event ends the stream: OpenAI's `[DONE]`, Anthropic's `message_stop`.
    pub last: bool,
    /// The event is the provider's error report (see [`stream_event_class`]).
    pub error: Option<StreamEventError>,
}

impl StreamEvent {
    /// Read an event from its name (`event:` field, `"message"` when the stream names none)
    /// and its data. Data that is not JSON, or JSON of another shape, is an event with nothing
    /// in it: never an error, so a provider's new event kinds pass through.
    ///
    /// ```
    /// use retry_runtime::integrations::http::StreamEvent;
    /// use retry_runtime::{Classify, ErrorClass};
    ///
    /// let chunk = StreamEvent::read("message", r#"{"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#);
    /// assert_eq!(chunk.text.as_deref(), Some("Hi"));
    /// assert!(StreamEvent::read("message", "[DONE]").last);
    ///
    /// let overloaded = StreamEvent::read(
    ///     "error",
    ///     r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    /// );
    /// assert_eq!(overloaded.error.unwrap().class(), ErrorClass::Status(529));
    /// ```
    pub fn read(event: &str, data: &str) -> StreamEvent {
        if data.trim() == "[DONE]" {
            return StreamEvent {
                last: true,
                ..StreamEvent::default()
            };
        }
        let Ok(wire) = serde_json::from_str::<Wire<'_>>(data) else {
            return StreamEvent {
                last: event == "message_stop",
                error: (event == "error").then(|| StreamEventError::new(event, data)),
                ..StreamEvent::default()
            };
        };
        let kind = wire.kind.as_deref().unwrap_or(event);
        if event == "error" || kind == "error" || wire.error.is_some() {
            return StreamEvent {
                error: Some(StreamEventError::new(event, data)),
                ..StreamEvent::default()
            };
        }
        let text = match kind {
            "content_block_delta" => wire.delta.and_then(|d| d.text).map(Cow::into_owned),
            _ => wire
                .choices
                .and_then(|choices| choices.into_iter().next())
                .and_then(|choice| choice.delta)
                .and_then(|delta| delta.content)
                .map(Cow::into_owned),
        };
        let (usage, model) = match kind {
            "message_start" => {
                let message = wire.message.unwrap_or_default();
                let usage = message.usage.map(|u| Usage {
                    input: u.input(),
                    output: 0,
                });
                (usage, message.model)
            }
            "message_delta" => (
                wire.usage.map(|u| Usage {
                    input: 0,
                    output: u.output_tokens.unwrap_or(0),
                }),
                wire.model,
            ),
            _ => (
                wire.usage.map(|u| Usage {
                    input: u.prompt_tokens.unwrap_or(0),
                    output: u.completion_tokens.unwrap_or(0),
                }),
                wire.model,
            ),
        };
        StreamEvent {
            text,
            usage,
            model: model.map(Cow::into_owned),
            last: kind == "message_stop",
            error: None,
        }
    }
}

/// The class of an error event in a provider's stream (`None` for an event that is not one):
/// OpenAI's `{"error": {"type", "code", "message"}}` data, or Anthropic's `event: error` with
/// `{"type": "error", "error": {"type", "message"}}`. The error's type stands for the status a
/// request would have had: `overloaded_error` 529, `rate_limit_error` (or a `rate_limit` code)
/// 429, `insufficient_quota` 429, `invalid_request_error` 400, `authentication_error` 401, `permission_error` 403,
/// `not_found_error` 404, `request_too_large` 413, anything else (`api_error`,
/// `server_error`) 500; then [`provider_class`](super::provider_class)'s markers apply, so an
/// `insufficient_quota` is [`Permanent`](ErrorClass::Permanent).
///
/// ```
/// use retry_runtime::integrations::http::stream_event_class;
/// use retry_runtime::ErrorClass;
///
/// let openai = r#"{"error":{"message":"The server had an error","type":"server_error"}}"#;
/// assert_eq!(stream_event_class("message", openai), Some(ErrorClass::Status(500)));
/// let anthropic = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
/// assert_eq!(stream_event_class("error", anthropic), Some(ErrorClass::Status(529)));
/// assert_eq!(stream_event_class("message", r#"{"choices":[]}"#), None);
/// ```
pub fn stream_event_class(event: &str, data: &str) -> Option<ErrorClass> {
    StreamEvent::read(event, data).error.map(|e| e.class)
}

/// The error a provider reported inside its stream (see [`stream_event_class`]), or a stream
/// that ended before its last event (a cut that looked like a clean end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEventError {
    event: String,
    data: String,
    class: ErrorClass,
}

impl StreamEventError {
    fn new(event: &str, data: &str) -> Self {
        let class = error_class(data);
        let (data, _) = super::error::snippet(data.as_bytes());
        StreamEventError {
            event: event.to_owned(),
            data,
            class,
        }
    }

    /// A stream whose body ended before its last event (`[DONE]`, `message_stop`): the
    /// connection was cut at an event's boundary. [`Transport`](ErrorClass::Transport).
    pub fn ended_early() -> Self {
        StreamEventError {
            event: String::new(),
            data: String::new(),
            class: ErrorClass::Transport,
        }
    }

    /// A stream whose bytes are not server-sent events (not UTF-8, or not SSE lines):
    /// [`Other`](ErrorClass::Other), the same bytes would come again.
    pub fn malformed(what: &str) -> Self {
        StreamEventError {
            event: String::new(),
            data: super::error::snippet(what.as_bytes()).0,
            class: ErrorClass::Other,
        }
    }

    /// The event's name (`error`, `message`), empty for a stream that ended early.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The start of the event's data (at most
    /// [`BODY_SNIPPET_LIMIT`](super::BODY_SNIPPET_LIMIT) bytes).
    pub fn data(&self) -> &str {
        &self.data
    }
}

impl fmt::Display for StreamEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.event.is_empty(), self.data.is_empty()) {
            (true, true) => f.write_str("the stream ended before its last event"),
            (true, false) => write!(f, "not an event stream: {}", self.data),
            _ => write!(
                f,
                "the provider sent an error event ({}): {}",
                self.event, self.data
            ),
        }
    }
}

impl std::error::Error for StreamEventError {}

impl Classify for StreamEventError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

fn error_class(data: &str) -> ErrorClass {
    let Ok(wire) = serde_json::from_str::<Wire<'_>>(data) else {
        return ErrorClass::Status(500);
    };
    let error = wire.error.unwrap_or_default();
    let kind = error.kind.as_deref().unwrap_or_default();
    let code = error.code.as_deref().unwrap_or_default();
    let message = error.message.as_deref().unwrap_or_default();
    let status = match kind {
        "overloaded_error" => 529,
        "rate_limit_error" | "rate_limit_exceeded" | "requests" | "tokens" => 429,
        // A quota is a 429 with its own marker (never retried), whichever field says it.
        "insufficient_quota" => 429,
        _ if code == "insufficient_quota" => 429,
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        _ if code.contains("rate_limit") => 429,
        _ => 500,
    };
    class_from_texts(status, &[code, kind, message])
}

/// The fields of OpenAI's and Anthropic's stream events that the runtime reads; everything
/// else is skipped without being kept. `Cow` borrows where the JSON has no escapes.
#[derive(Deserialize, Default)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize, Default)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize, Default)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct Message<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Anthropic's input tokens: the uncached ones plus those written to and read from its
    /// prompt cache (each billed; at one price here, an over-count for cache reads).
    fn input(&self) -> u64 {
        [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ]
        .into_iter()
        .flatten()
        .fold(0, u64::saturating_add)
    }
}

#[derive(Deserialize, Default)]
struct WireError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chunks_text_usage_and_done() {
        let chunk = StreamEvent::read(
            "message",
            r#"{"id":"c","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"a \"quoted\" word"},"finish_reason":null}],"usage":null}"#,
        );
        assert_eq!(chunk.text.as_deref(), Some("a \"quoted\" word"));
        assert_eq!(chunk.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(chunk.usage, None);
        assert!(!chunk.last && chunk.error.is_none());

        let usage = StreamEvent::read(
            "message",
            r#"{"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#,
        );
        assert_eq!(
            usage.usage,
            Some(Usage {
                input: 12,
                output: 7
            })
        );
        assert!(StreamEvent::read("message", " [DONE]").last);
    }

    #[test]
    fn anthropic_events() {
        let start = StreamEvent::read(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
        );
        assert_eq!(start.model.as_deref(), Some("claude-sonnet-4-5"));
        // message_start's output count is repeated in message_delta's: counted once, there.
        assert_eq!(
            start.usage,
            Some(Usage {
                input: 30,
                output: 0
            })
        );
        let delta = StreamEvent::read(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        );
        assert_eq!(delta.text.as_deref(), Some("Hello"));
        let end = StreamEvent::read(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        );
        assert_eq!(
            end.usage,
            Some(Usage {
                input: 0,
                output: 15
            })
        );
        assert!(StreamEvent::read("message_stop", r#"{"type":"message_stop"}"#).last);
        assert_eq!(
            StreamEvent::read("ping", r#"{"type":"ping"}"#),
            StreamEvent::default()
        );
    }

    #[test]
    fn error_events_by_their_type() {
        let anthropic = |kind: &str| {
            stream_event_class(
                "error",
                &format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"m"}}}}"#),
            )
        };
        assert_eq!(anthropic("overloaded_error"), Some(ErrorClass::Status(529)));
        assert_eq!(anthropic("api_error"), Some(ErrorClass::Status(500)));
        assert_eq!(anthropic("rate_limit_error"), Some(ErrorClass::Status(429)));
        assert_eq!(
            anthropic("invalid_request_error"),
            Some(ErrorClass::Status(400))
        );
        assert_eq!(
            anthropic("request_too_large"),
            Some(ErrorClass::Status(413))
        );

        let openai = |kind: &str, code: &str| {
            stream_event_class(
                "message",
                &format!(r#"{{"error":{{"type":"{kind}","code":"{code}","message":"m"}}}}"#),
            )
        };
        assert_eq!(openai("server_error", ""), Some(ErrorClass::Status(500)));
        assert_eq!(
            openai("requests", "rate_limit_exceeded"),
            Some(ErrorClass::Status(429))
        );
        assert_eq!(
            openai("insufficient_quota", "insufficient_quota"),
            Some(ErrorClass::Permanent)
        );
        assert_eq!(
            openai("invalid_request_error", "context_length_exceeded"),
            Some(ErrorClass::Permanent)
        );
    }

    #[test]
    fn garbage_is_an_empty_event_or_an_error_named_as_such() {
        assert_eq!(
            StreamEvent::read("message", "{not json"),
            StreamEvent::default()
        );
        assert_eq!(StreamEvent::read("message", ""), StreamEvent::default());
        assert_eq!(
            StreamEvent::read("message", r#"{"choices":"wrong shape"}"#),
            StreamEvent::default()
        );
        // An `error` event whose data cannot be read is still an error: a server error.
        let e = StreamEvent::read("error", "upstream connect error")
            .error
            .unwrap();
        assert_eq!(e.class(), ErrorClass::Status(500));
        assert_eq!(e.data(), "upstream connect error");
        assert_eq!(
            StreamEventError::ended_early().to_string(),
            "the stream ended before its last event"
        );
        assert_eq!(
            StreamEventError::ended_early().class(),
            ErrorClass::Transport
        );
        // A long error event keeps only its snippet.
        let long = format!(
            r#"{{"error":{{"type":"server_error","message":"{}"}}}}"#,
            "x".repeat(10_000)
        );
        let e = StreamEvent::read("message", &long).error.unwrap();
        assert!(e.data().len() <= super::super::BODY_SNIPPET_LIMIT);
        assert_eq!(e.class(), ErrorClass::Status(500));
    }
}
