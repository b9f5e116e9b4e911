//! Speaking the providers' language: their headers, their error shapes, their clients.
//!
//! Each integration is behind its own feature, none of them default, so the core stays light:
//!
//! | feature | module | what it gives | pulls in |
//! |---|---|---|---|
//! | `http` | `http` | `RateLimitHint` from `Retry-After`, `retry-after-ms`, `x-should-retry`, OpenAI's `x-ratelimit-*` and Anthropic's `anthropic-ratelimit-*` headers; `HttpError` with the providers' rules; `StreamEvent`, what an OpenAI or Anthropic stream event says (text, usage, error); a request's price | `http`, `httpdate`, `serde_json` |
//! | `reqwest` | `reqwest` | `Classify` for `reqwest::Error`; `HttpError` from a failed `reqwest::Response`; a ready-made `CallError`; `sse`, a provider's event stream from a response | `reqwest` (feature `stream`, no TLS backend of its own choosing), `bytes`, `eventsource-stream`, and `http` |
//! | `async-openai` | `openai` | `Classify` for `OpenAIError`; `From<Rejected>` for it; a client that makes one HTTP request per call | `async-openai` (feature `middleware`), `tower-service`, `serde_json`, and `reqwest` |
//! | `tower` | `tower` | `ResilientLayer`: the executor as a `tower` layer, each request one call under a policy; `Replay`, `HttpResponse` | `tower-layer`, `tower-service`, and `http` |
//! | `reqwest-middleware` | `reqwest_middleware` | `ResilientMiddleware`: the same, for a `ClientWithMiddleware`; `Classify` for `reqwest_middleware::Error` | `reqwest-middleware`, `async-trait`, and `tower`, `reqwest` |
//!
//! The providers' rules live in one place (`http::provider_class`, and `http::stream_event_class`
//! for an error event inside a stream): a 429 whose body says `insufficient_quota` is
//! [`Permanent`](crate::ErrorClass::Permanent) (the quota will not come back in seconds); a 4xx
//! about the context length or a content policy is `Permanent`; 529 "overloaded" stays a
//! retryable 5xx. Garbage in a header is ignored with a DEBUG event (target `retry_runtime`),
//! never a panic, and absurd waits are capped at a day (`http::MAX_HINTED_WAIT`) before the policy's own `max_retry_after` bound applies.
//!
//! async-openai retries 429s and 5xx by itself (three times, by default). Retrying at two
//! layers multiplies attempts, so the `openai` module documents how to turn that off and offers
//! a client that has it off.

#[cfg(feature = "http")]
pub mod http;

#[cfg(feature = "reqwest")]
pub mod reqwest;

#[cfg(feature = "async-openai")]
pub mod openai;

#[cfg(feature = "tower")]
pub mod tower;

#[cfg(feature = "reqwest-middleware")]
pub mod reqwest_middleware;
