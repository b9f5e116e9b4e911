//! [`HttpResponse`]: what the layer reads from an answer, and gives back whole.

use std::future::Future;

use http::{HeaderMap, StatusCode};

use crate::spend::Spend;

/// An HTTP answer the layer can judge: a 4xx or 5xx status is a failed attempt, classified by
/// its status and headers ([`HttpError`](crate::integrations::http::HttpError):
/// `Retry-After`, `retry-after-ms`, `x-should-retry`, the rate-limit headers) and by what the
/// start of its body says, where the type lets the layer read it.
///
/// | answer | a failure's body | a success's spend |
/// |---|---|---|
/// | `http::Response<B>` | not read: the providers' body rules (`insufficient_quota`, context length) do not apply, status and headers do | zero |
/// | `reqwest::Response` (feature `reqwest`) | its first 2 KiB are read for the providers' rules | a JSON answer (up to 1 MiB) is read for its `usage`, priced at its `model` |
///
/// Whatever is read is given back: the answer handed on holds the same status, headers,
/// extensions, URL and body bytes, so the caller (async-openai building its `ApiError`, say)
/// reads it as if the layer had not. A body cut while the layer reads it is handed on cut at
/// the same byte, with the same error.
pub trait HttpResponse: Sized + Send + 'static {
    /// The answer's status.
    fn status(&self) -> StatusCode;

    /// The answer's headers.
    fn headers(&self) -> &HeaderMap;

    /// The start of a failed answer's body (up to
    /// [`BODY_SNIPPET_LIMIT`](crate::integrations::http::BODY_SNIPPET_LIMIT) bytes are used),
    /// and the answer, whole again. By default nothing is read.
    fn read_error_body(self) -> impl Future<Output = (Self, Vec<u8>)> + Send {
        std::future::ready((self, Vec::new()))
    }

    /// What a successful answer cost, and the answer, whole again. By default nothing is read
    /// and the answer costs nothing.
    fn read_spend(self) -> impl Future<Output = (Self, Spend)> + Send {
        std::future::ready((self, Spend::ZERO))
    }
}

impl<B: Send + 'static> HttpResponse for http::Response<B> {
    fn status(&self) -> StatusCode {
        http::Response::status(self)
    }

    fn headers(&self) -> &HeaderMap {
        http::Response::headers(self)
    }
}

#[cfg(feature = "reqwest")]
mod reqwest_response {
    use std::borrow::Cow;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use futures_core::Stream;
    use http::{HeaderMap, StatusCode};
    use reqwest::ResponseBuilderExt;
    use serde::Deserialize;

    use super::HttpResponse;
    use crate::integrations::http::{priced, BODY_SNIPPET_LIMIT};
    use crate::spend::{Spend, Usage};

    /// The most of a JSON success the layer reads for its usage: a chat completion is a few
    /// KiB; a longer body is handed on unread past this, and counted as zero.
    const USAGE_READ_LIMIT: usize = 1 << 20;

    impl HttpResponse for reqwest::Response {
        fn status(&self) -> StatusCode {
            reqwest::Response::status(self)
        }

        fn headers(&self) -> &HeaderMap {
            reqwest::Response::headers(self)
        }

        async fn read_error_body(self) -> (Self, Vec<u8>) {
            // One byte past the snippet tells the snippet it was truncated.
            let (response, read, _) = read_prefix(self, BODY_SNIPPET_LIMIT + 1).await;
            (response, read.to_vec())
        }

        async fn read_spend(self) -> (Self, Spend) {
            let too_long = self
                .content_length()
                .is_some_and(|n| n > USAGE_READ_LIMIT as u64);
            if !is_json(self.headers()) || too_long {
                return (self, Spend::ZERO);
            }
            let (response, read, whole) = read_prefix(self, USAGE_READ_LIMIT).await;
            let spend = if whole {
                usage_spend(&read).unwrap_or(Spend::ZERO)
            } else {
                tracing::debug!(target: "retry_runtime", read = read.len(), "a JSON answer too long (or cut) to read its usage: counted as zero");
                Spend::ZERO
            };
            (response, spend)
        }
    }

    /// `application/json`, or a `+json` type (`application/problem+json`).
    fn is_json(headers: &HeaderMap) -> bool {
        let Some(kind) = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let essence = kind.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json")
    }

    /// Read `response`'s body until more than `limit` bytes are in (or it ends): the bytes
    /// read, whether they are the whole body, and the response rebuilt around them (the bytes
    /// read, then the rest unread, or the error that cut the read).
    async fn read_prefix(
        mut response: reqwest::Response,
        limit: usize,
    ) -> (reqwest::Response, Bytes, bool) {
        let mut read = Vec::new();
        let mut end: Option<Option<reqwest::Error>> = None;
        while read.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => read.extend_from_slice(&chunk),
                Ok(None) => {
                    end = Some(None);
                    break;
                }
                Err(error) => {
                    end = Some(Some(error));
                    break;
                }
            }
        }
        let read = Bytes::from(read);
        let status = response.status();
        let version = response.version();
        let url = response.url().clone();
        let headers = std::mem::take(response.headers_mut());
        let extensions = std::mem::take(response.extensions_mut());
        let (body, whole) = match end {
            Some(None) => (reqwest::Body::from(read.clone()), true),
            Some(Some(error)) => (
                reqwest::Body::wrap_stream(Replayed {
                    head: Some(read.clone()),
                    tail: Tail::Cut(Some(error)),
                }),
                false,
            ),
            None => (
                reqwest::Body::wrap_stream(Replayed {
                    head: Some(read.clone()),
                    tail: Tail::Rest(Box::pin(response.bytes_stream())),
                }),
                false,
            ),
        };
        let mut rebuilt = http::Response::new(body);
        *rebuilt.status_mut() = status;
        *rebuilt.version_mut() = version;
        *rebuilt.headers_mut() = headers;
        *rebuilt.extensions_mut() = extensions;
        // reqwest keeps a response's URL in an extension only its own builder can set.
        if let Ok(marker) = http::Response::builder().url(url).body(()) {
            rebuilt
                .extensions_mut()
                .extend(marker.into_parts().0.extensions);
        }
        (reqwest::Response::from(rebuilt), read, whole)
    }

    /// A body given back: the bytes the layer read, then what it did not.
    struct Replayed {
        head: Option<Bytes>,
        tail: Tail,
    }

    enum Tail {
        /// The rest of the original body, unread.
        Rest(Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>),
        /// The error that cut the body while the layer read it.
        Cut(Option<reqwest::Error>),
    }

    impl Stream for Replayed {
        type Item = reqwest::Result<Bytes>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            if let Some(head) = this.head.take().filter(|head| !head.is_empty()) {
                return Poll::Ready(Some(Ok(head)));
            }
            match &mut this.tail {
                Tail::Rest(rest) => rest.as_mut().poll_next(cx),
                Tail::Cut(error) => Poll::Ready(error.take().map(Err)),
            }
        }
    }

    /// What an answer's `usage` cost at its `model`'s price: OpenAI's `prompt_tokens` and
    /// `completion_tokens`, Anthropic's `input_tokens` (with its cache's) and `output_tokens`.
    /// `None` for a body without both.
    fn usage_spend(body: &[u8]) -> Option<Spend> {
        let answer: Answer<'_> = serde_json::from_slice(body).ok()?;
        let (model, usage) = (answer.model?, answer.usage?);
        let input = [
            usage.prompt_tokens,
            usage.input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
        ]
        .into_iter()
        .flatten()
        .fold(0, u64::saturating_add);
        let output = usage.completion_tokens.or(usage.output_tokens).unwrap_or(0);
        Some(priced(&model, Usage { input, output }))
    }

    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
        usage: Option<AnswerUsage>,
    }

    #[derive(Deserialize)]
    struct AnswerUsage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cache_creation_input_tokens: Option<u64>,
        cache_read_input_tokens: Option<u64>,
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn usage_of_both_shapes() {
            let openai = br#"{"model":"m-unpriced","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
            assert_eq!(usage_spend(openai), Some(Spend::from_tokens(5)));
            let anthropic = br#"{"type":"message","model":"m-unpriced","usage":{"input_tokens":4,"cache_read_input_tokens":6,"output_tokens":1}}"#;
            assert_eq!(usage_spend(anthropic), Some(Spend::from_tokens(11)));
            assert_eq!(usage_spend(br#"{"model":"m-unpriced"}"#), None);
            assert_eq!(usage_spend(b"not json"), None);
        }

        #[test]
        fn json_types() {
            let mut headers = HeaderMap::new();
            assert!(!is_json(&headers));
            for (kind, json) in [
                ("application/json", true),
                ("Application/JSON; charset=utf-8", true),
                ("application/problem+json", true),
                ("text/event-stream", false),
            ] {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(kind),
                );
                assert_eq!(is_json(&headers), json, "{kind}");
            }
        }
    }
}
