//! What a request costs at the configured prices (`[price."MODEL"]`), from the bytes a
//! provider is sent and the usage it reports.

use crate::spend::{Spend, Usage};

/// What `usage` of `model` costs at its configured price. A model with no price counts its
/// tokens only, with one WARN per model naming the `[price."MODEL"]` entry to add (a spend
/// limit in dollars then sees tokens only: never a silent zero).
pub fn priced(model: &str, usage: Usage) -> Spend {
    match crate::config::price(model) {
        Some(price) => price.cost(usage),
        None => {
            warn_unpriced(model);
            Spend::from_tokens(usage.input.saturating_add(usage.output))
        }
    }
}

/// What a request body's prompt is expected to cost: for a JSON body with `model` and
/// `messages` (OpenAI's chat completions, Anthropic's messages, with its `system` prompt),
/// the JSON length of the messages over four (about a token per four characters of English;
/// the quotes and keys make it an over-estimate, never an under-estimate for plain text),
/// priced at the model's input price. `None` for a body of another shape.
///
/// ```
/// use retry_runtime::integrations::http::request_prompt;
///
/// let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello there"}]}"#;
/// assert_eq!(request_prompt(body).unwrap().tokens(), 11); // 42 characters of JSON
/// assert!(request_prompt(b"not json").is_none());
/// ```
pub fn request_prompt(body: &[u8]) -> Option<Spend> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let model = json.get("model")?.as_str()?;
    json.get("messages")?;
    let chars = ["messages", "system"]
        .iter()
        .filter_map(|key| json.get(key))
        .map(|part| serde_json::to_string(part).map_or(0, |text| text.len()))
        .sum();
    Some(prompt_cost(model, chars))
}

/// What a streamed request is charged if its stream is cut before the provider's usage
/// arrives: the prompt ([`request_prompt`]) and one output token per chunk received, at the
/// model's price. For [`Streamed::bill_if_cut`](crate::Streamed::bill_if_cut). `None` for a
/// body of another shape.
///
/// ```
/// use retry_runtime::integrations::http::stream_cut_bill;
///
/// let body = br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
/// let (prompt, per_chunk) = stream_cut_bill(body).unwrap();
/// assert!(prompt.tokens() > 0);
/// assert_eq!(per_chunk.tokens(), 1);
/// ```
pub fn stream_cut_bill(body: &[u8]) -> Option<(Spend, Spend)> {
    let prompt = request_prompt(body)?;
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let model = json.get("model")?.as_str()?;
    Some((
        prompt,
        priced(
            model,
            Usage {
                input: 0,
                output: 1,
            },
        ),
    ))
}

/// The prompt's cost from the length of its JSON.
pub(crate) fn prompt_cost(model: &str, json_chars: usize) -> Spend {
    let usage = Usage {
        input: (json_chars as u64).div_ceil(4),
        output: 0,
    };
    priced(model, usage)
}

fn warn_unpriced(model: &str) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.insert(model.to_owned()) {
        tracing::warn!(target: "retry_runtime", model, "no price configured for this model: its answers count tokens only; add [price.\"{model}\"] input = \"…usd\", output = \"…usd\" (per million tokens)");
    }
}
