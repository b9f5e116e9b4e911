//! A 200 whose body the connection cuts short (the server promises 2,000 bytes, sends 100 and
//! closes) is a transport failure: retried, and the next attempt's whole answer is returned.
//! A complete body that does not parse is the caller's problem (`Other`): not retried.
//! Over real HTTP: a hand-written server on loopback, since a well-behaved one cannot lie about
//! its length.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use retry_runtime::integrations::reqwest::CallError;
use retry_runtime::{observe, resilient, Classify, ErrorClass, StopReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WHOLE: &str = r#"{"answer":"mock"}"#;

/// A server whose first `cut` answers are 200s cut after 100 of their promised 2,000 bytes;
/// then whole answers. With `garbage`, the answers are complete but not JSON.
async fn server(cut: usize, garbage: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/chat", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        // Bounded: a test makes at most a handful of requests.
        for _ in 0..16 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let reply = if n < cut {
                let mut r = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2000\r\nconnection: close\r\n\r\n".to_string();
                r.push_str(&"x".repeat(100));
                r
            } else if garbage {
                let body = "not json at all";
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{WHOLE}", WHOLE.len())
            };
            let _ = socket.write_all(reply.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, served)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[resilient(max = 3, base = "1ms")]
async fn complete(client: &reqwest::Client, url: &str) -> Result<String, CallError> {
    let body = client.post(url).send().await?.bytes().await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[resilient(max = 3, base = "1ms")]
async fn complete_json(
    client: &reqwest::Client,
    url: &str,
) -> Result<serde_json::Value, CallError> {
    Ok(client.post(url).send().await?.json().await?)
}

#[tokio::test]
async fn a_body_cut_by_the_connection_is_transport_and_retried() {
    let (url, served) = server(1, false).await;
    let (answer, report) = observe(complete(&client(), &url)).await;
    assert_eq!(answer.unwrap(), WHOLE);
    assert_eq!(served.load(Ordering::SeqCst), 2);
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Transport));
    assert_eq!(report.stop(), Some(&StopReason::Success));
}

#[tokio::test]
async fn a_json_body_cut_by_the_connection_is_retried_too() {
    let (url, _) = server(2, false).await;
    let (answer, report) = observe(complete_json(&client(), &url)).await;
    assert_eq!(answer.unwrap()["answer"], "mock");
    assert_eq!(report.attempts().len(), 3);
}

#[tokio::test]
async fn a_complete_body_that_does_not_parse_is_not_retried() {
    let (url, served) = server(0, true).await;
    let (answer, report) = observe(complete_json(&client(), &url)).await;
    let error = answer.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Other, "{error:?}");
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
}
