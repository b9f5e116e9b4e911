//! Every TOML configuration a user may copy loads as written: each ```toml block of README.md
//! and docs/, and the one in the `config` module's documentation. A user who copies an
//! example must never end up on the defaults (with no spend limit) because it was refused.

use std::path::Path;

use retry_runtime::Config;

/// The ```toml blocks of a Markdown text (or of `//!` doc comments, prefix stripped).
fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line
            .strip_prefix("//!")
            .map_or(line, |l| l.strip_prefix(' ').unwrap_or(l));
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_documented_configuration_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![
        root.join("README.md"),
        root.join("retry-runtime/src/config/mod.rs"),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            sources.push(path);
        }
    }
    let mut loaded = 0;
    for source in &sources {
        let text = std::fs::read_to_string(source).unwrap();
        for (i, block) in toml_blocks(&text).into_iter().enumerate() {
            if block.trim_start().starts_with("[dependencies]") {
                continue; // a Cargo manifest, not a runtime configuration
            }
            if let Err(error) = Config::from_toml_str(&block) {
                panic!(
                    "{} block {} does not load: {error}\n{block}",
                    source.display(),
                    i + 1
                );
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 4, "found only {loaded} TOML blocks");
}

#[test]
fn the_documented_cache_capacity_loads() {
    let config = Config::from_toml_str("[fallback]\ncache_capacity = 1024\n").unwrap();
    assert_eq!(config, Config::default().with_cache_capacity(1024));
    let error = Config::from_toml_str("[fallback]\ncache_capacity = 0\n").unwrap_err();
    assert!(error.to_string().contains("line 2"), "{error}");
}

#[test]
fn an_out_of_range_failure_rate_names_its_key_and_line() {
    let error = Config::from_toml_str("[breaker.openai]\nfailures = 5\nfailure_rate = \"150%\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("failure_rate"), "{error}");
}
