//! A streamed chat completion under `#[resilient]`: retried until its first chunk, never after.
//!
//! ```text
//! cargo run --example streaming
//! ```
//!
//! A local server on loopback plays OpenAI's streaming API (the tests' SSE server), and
//! async-openai's `create_stream` talks to it through `single_attempt_client`. Three calls:
//! one that meets a 429 and then streams; one whose stream is cut after three chunks (the
//! caller keeps what it got, nothing is sent twice, the breaker counts one failure); and one
//! that streams to its end with the provider's usage chunk pricing it. Each call's report is
//! printed after its stream.

#[path = "../tests/sse_server/mod.rs"]
mod sse_server;

use std::io::Write;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use futures::StreamExt;
use retry_runtime::integrations::openai::{chunk_spend, single_attempt_client, stream_cut_bill};
use retry_runtime::{configure, observe, resilient, retry_on, Config, Price, Streamed};
use sse_server::{Event, Scripted, SseServer, MODEL};

#[resilient(
    max = 3,
    base = "200ms",
    first_token = "10s",
    idle = "30s",
    breaker = "openai"
)]
#[retry_on(429, 500..=599, timeout, transport)]
async fn chat(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    let (prompt, per_chunk) = stream_cut_bill(request);
    let chunks = client.chat().create_stream(request.clone()).await?;
    Ok(Streamed::new(chunks)
        .with_spend(chunk_spend)
        .bill_if_cut(prompt, per_chunk))
}

fn request(prompt: &str) -> Result<CreateChatCompletionRequest, OpenAIError> {
    CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()?
            .into()])
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            ..Default::default()
        })
        .build()
}

/// Print the stream as it arrives; then the error that ended it, if one did.
async fn show(client: &Client<OpenAIConfig>, prompt: &str) -> Result<(), OpenAIError> {
    let request = request(prompt)?;
    let (printed, report) = observe(async {
        let mut stream = match chat(client, &request).await {
            Ok(stream) => stream,
            Err(e) => return format!("failed before any chunk: {e}"),
        };
        print!("  ");
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    for choice in chunk.choices {
                        print!("{}", choice.delta.content.unwrap_or_default());
                    }
                    let _ = std::io::stdout().flush();
                }
                Err(e) => return format!("\n  the stream ended with an error: {e}"),
            }
        }
        String::new()
    })
    .await;
    println!("{printed}");
    println!("  report: {report}");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    configure(Config::default().with_price(MODEL, Price::per_million(0.15, 0.60)))?;
    let words = [
        "The", " storm", " passed", ";", " the", " answers", " stayed.",
    ];
    let server = SseServer::start(vec![
        // 1: a 429, then the stream.
        Scripted::rate_limited(300),
        Scripted::stream(
            words
                .iter()
                .map(|w| Event::chunk(*w).after(Duration::from_millis(80)))
                .chain([Event::Finish, sse_server::usage(&words), Event::Done]),
        ),
        // 2: cut after three chunks.
        Scripted::words_then_cut(&["Half", " an", " answer"]),
        // 3: to the end, priced by its usage chunk.
        Scripted::words(&["A", " whole", " one."]),
    ])
    .await;
    let config = OpenAIConfig::new()
        .with_api_base(server.base_url())
        .with_api_key("sk-local");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let client = single_attempt_client(config, http);

    println!("1. a 429, retried before the first chunk:");
    show(&client, "What happened?").await?;
    println!("\n2. cut after three chunks: kept, not repeated, one failure for the breaker:");
    show(&client, "And then?").await?;
    println!("\n3. to the end:");
    show(&client, "Once more.").await?;
    println!("\nthe server saw {} requests", server.requests());
    Ok(())
}
