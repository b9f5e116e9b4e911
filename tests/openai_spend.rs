//! Spend out of the box with async-openai: through `single_attempt_client`, a call site with
//! `budget` and `pool` counts what each answer cost from its `usage` and the configured price
//! of its model, with no `Metered` impl of the user's own; an attempt the runtime cuts is still
//! charged its prompt (`prompt_estimate` of what the client sent). Against a local
//! OpenAI-compatible server on loopback.

mod mock_provider;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use mock_provider::{chat_completion, MockServer, Reply};
use retry_runtime::integrations::openai::{prompt_estimate, single_attempt_client, Completion};
use retry_runtime::{
    configure, observe, pool, resilient, retry_on, Budget, Config, Price, Spend, StopReason,
};

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // In TOML, as a user would write it: $100 / $200 per million tokens, so that the
        // mock's 3 prompt and 2 completion tokens cost 700 micro-dollars.
        let config = Config::from_toml_str(
            "[price.\"mock\"]\ninput = \"100usd\"\noutput = \"200usd\"\n\n[pool.openai-spend]\nlimit = \"1.00usd\"\nwindow = \"1h\"\n\n[pool.combo]\nlimit = \"1.00usd\"\n\n[breaker.combo]\nfailures = 2\ncooldown = \"30s\"\n\n[pace.combo]\nrpm = 600\nadaptive = false\nburst = \"1ms\"\n",
        )
        .unwrap();
        assert_eq!(config.price("mock-1"), Some(Price::micros_per_million(100_000_000, 200_000_000)));
        assert_eq!(
            config.pool("openai-spend").map(|p| p.limit),
            Some(Budget::usd(1.00))
        );
        configure(config).unwrap();
    });
}

fn request(prompt: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("mock-1")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

fn client(server: &MockServer) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(server.url("/v1"))
        .with_api_key("sk-test");
    single_attempt_client(
        config,
        reqwest::Client::builder().no_proxy().build().unwrap(),
    )
}

#[resilient(
    max = 3,
    base = "1ms",
    timeout = "300ms",
    budget = "0.10usd",
    pool = "openai-spend"
)]
#[retry_on(429, 500..=599, timeout, transport)]
async fn complete(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Completion, OpenAIError> {
    // No spend glue: `Completion` is Metered, and `single_attempt_client` bills a cut attempt
    // its prompt.
    client.chat().create(request.clone()).await.map(Completion)
}

#[tokio::test]
async fn answers_are_counted_from_their_usage_and_cut_attempts_pay_their_prompt() {
    setup();
    let server = MockServer::start([
        Reply::status(200).json(&chat_completion("first")),
        // The second call's first attempt is slower than the 300 ms timeout.
        Reply::status(200)
            .json(&chat_completion("too late"))
            .delayed(Duration::from_secs(2)),
        Reply::status(200).json(&chat_completion("second")),
    ])
    .await;
    let client = client(&server);
    let answer = Spend::new(700, 5);

    let (reply, report) = observe(complete(&client, &request("hello"))).await;
    assert_eq!(
        reply.unwrap().choices[0].message.content.as_deref(),
        Some("first")
    );
    assert_eq!(report.spent(), answer);
    assert_eq!(pool("openai-spend").ledger().total(), answer);

    let prompt = prompt_estimate(&request("hello again"));
    assert!(prompt.micros() > 0 && prompt.tokens() > 0, "{prompt}");
    let (reply, report) = observe(complete(&client, &request("hello again"))).await;
    assert!(reply.is_ok());
    assert_eq!(report.stop(), Some(&StopReason::Success));
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(
        report.attempts()[0].spend,
        prompt,
        "the cut attempt paid its prompt"
    );
    assert_eq!(report.spent(), prompt + answer);
    assert_eq!(
        pool("openai-spend").ledger().total(),
        answer + prompt + answer
    );
}

// ---- everything at one call site, through the real client ----

#[resilient(
    max = 1,
    timeout = "300ms",
    breaker = "combo",
    pace = "combo",
    pool = "combo",
    fallback = cached
)]
async fn combo(
    client: &Client<OpenAIConfig>,
    #[key] prompt: &str,
) -> Result<Completion, OpenAIError> {
    client.chat().create(request(prompt)).await.map(Completion)
}

#[tokio::test]
async fn breaker_pacer_pool_and_cache_together() {
    setup();
    let server = MockServer::start([
        Reply::status(200).json(&chat_completion("fresh")),
        Reply::status(503).json(&mock_provider::openai_error(
            "server_error",
            "overloaded",
            "busy",
        )),
    ])
    .await;
    let client = client(&server);

    // A good answer: paced (first permit at once), billed to the pool, remembered.
    let (answer, report) = observe(combo(&client, "q")).await;
    assert_eq!(
        answer.unwrap().choices[0].message.content.as_deref(),
        Some("fresh")
    );
    assert_eq!(report.spent(), Spend::new(700, 5));

    // Two outage failures: each served from the cache, and they open the breaker.
    for _ in 0..2 {
        let (answer, report) = observe(combo(&client, "q")).await;
        assert_eq!(
            answer.unwrap().choices[0].message.content.as_deref(),
            Some("fresh")
        );
        assert_eq!(report.fallback().map(|f| f.kind.as_str()), Some("cached"));
    }
    assert_eq!(server.hits(), 3);
    assert_eq!(
        retry_runtime::breaker("combo").state(),
        retry_runtime::BreakerState::Open
    );

    // Open: refused before the pacer's line (no 100 ms wait for a permit), answered from the
    // cache, the provider not asked, the pool not charged.
    let started = std::time::Instant::now();
    let (answer, report) = observe(combo(&client, "q")).await;
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        answer.unwrap().choices[0].message.content.as_deref(),
        Some("fresh")
    );
    assert!(matches!(
        report.stop(),
        Some(StopReason::CircuitOpen { .. })
    ));
    assert_eq!(report.paced(), Duration::ZERO);
    assert_eq!(report.fallback().map(|f| f.kind.as_str()), Some("cached"));
    assert_eq!(server.hits(), 3);
    assert_eq!(pool("combo").ledger().total(), Spend::new(700, 5));
}
