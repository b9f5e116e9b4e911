//! The `#[resilient]` and `#[retry_on]` attributes of `retry-runtime`.
//!
//! Use them through `retry_runtime`, which re-exports them: the generated code calls into
//! `retry_runtime::__private`. Parsing and every compile-time check live in `attr`, the
//! rewrite in `expand`; this file only wires them together.

use proc_macro::TokenStream;
use quote::{quote, ToTokens};
use syn::ItemFn;

mod attr;
mod expand;

use attr::Errors;

/// The `#[resilient]` attribute; its documentation (keys, examples) is on
/// `retry_runtime::resilient`, the path to use it by.
#[proc_macro_attribute]
pub fn resilient(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut item: ItemFn = match syn::parse(item.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "#[resilient] goes on an `async fn`",
            );
            let mut out = proc_macro2::TokenStream::from(item);
            out.extend(error.into_compile_error());
            return out.into();
        }
    };
    let mut errors = Errors::default();
    let args = match syn::parse::<attr::Args>(args) {
        Ok(args) => Some(args),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let policy = args.map(|args| attr::Policy::from_args(&args, &mut errors));

    let retry_on_attrs = expand::take_retry_on(&mut item);
    let retry_on_path = retry_on_attrs.first().map(|a| a.path().clone());
    let mut retry_on = None;
    for (i, a) in retry_on_attrs.iter().enumerate() {
        if i > 0 {
            errors.at(a, "a second #[retry_on]: list every code in one attribute");
            continue;
        }
        match &a.meta {
            syn::Meta::List(list) => retry_on = attr::retry_on(list, &mut errors),
            other => errors.at(
                other,
                "#[retry_on] needs the list of what to retry, e.g. #[retry_on(429, 500..=599, timeout)]",
            ),
        }
    }
    let keys = expand::take_keys(&mut item, &mut errors);
    let cache_key = policy
        .as_ref()
        .and_then(|policy| expand::cache_key(policy, &keys, &mut errors));
    expand::check_fn(&item, &mut errors);
    let streaming = expand::returns_stream(&item);
    if let Some(policy) = &policy {
        expand::check_fallback_args(&item, policy, &mut errors);
        policy.check_streaming(streaming, &mut errors);
    }

    let used = expand::use_retry_on(retry_on_path.as_ref());
    match (errors.finish(), policy) {
        (Ok(()), Some(policy)) => {
            expand::expand(item, &policy, retry_on.as_ref(), used, cache_key, streaming).into()
        }
        (Err(e), _) => with_error(item, e, used),
        (Ok(()), None) => item.into_token_stream().into(),
    }
}

/// List what a `#[resilient]` fn retries. See `retry_runtime`.
///
/// It only marks the function: `#[resilient]` reads it. Written above `#[resilient]`, it moves
/// itself below so that `#[resilient]` sees it.
#[proc_macro_attribute]
pub fn retry_on(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let mut item: ItemFn = match syn::parse(item.clone()) {
        Ok(item) => item,
        Err(_) => return item,
    };
    let Some(pos) = item
        .attrs
        .iter()
        .position(|a| expand::is_named(a.path(), "resilient"))
    else {
        let error = syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[retry_on] without #[resilient]: it only says what a #[resilient] fn retries; add #[resilient] above it",
        );
        // Strip any further #[retry_on] so that one mistake gives one error.
        expand::take_retry_on(&mut item);
        return with_error(item, error, quote!());
    };
    // Re-emit as `#[resilient(..)] #[retry_on(..)]`: attribute macros expand in order, so
    // `#[resilient]` now runs next and reads (and removes) this list.
    let marker: syn::Attribute = syn::parse_quote!(#[retry_on(#args)]);
    item.attrs.insert(pos + 1, marker);
    item.into_token_stream().into()
}

/// The errors, plus the function unchanged (minus our attributes), so that the user sees
/// only the errors we report and the IDE still knows the function.
fn with_error(mut item: ItemFn, error: syn::Error, used: proc_macro2::TokenStream) -> TokenStream {
    expand::take_retry_on(&mut item);
    let error = error.into_compile_error();
    // `used` keeps the user's `use …::retry_on` counted as used, as the expansion does.
    let (attrs, vis, sig, block) = (&item.attrs, &item.vis, &item.sig, &item.block);
    quote!(#error #(#attrs)* #vis #sig { #used #block }).into()
}

#[cfg(test)]
mod tests {
    // The keys table users read (the `#[resilient]` rustdoc page, and README's copy of it)
    // names every key the attribute accepts. Both files are the workspace's, read at run time:
    // the published crate holds neither (an `include_str!` of them would not compile there).
    #[test]
    fn every_key_is_documented() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if !root.join("retry-runtime").join("Cargo.toml").exists() {
            eprintln!("not in the workspace (a packaged crate): the keys tables are not here");
            return;
        }
        let read = |path: &str| {
            std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let (page, readme) = (read("retry-runtime/docs/resilient.md"), read("README.md"));
        for key in crate::attr::KEYS {
            let cell = format!("| `{key}`");
            let listed = |text: &str| {
                text.lines().any(|l| {
                    l.starts_with(&cell)
                        || l.starts_with(&format!("| `{key}`,"))
                        || l.contains(&format!(", `{key}` |"))
                })
            };
            assert!(
                listed(&page),
                "`{key}` is not in the #[resilient] rustdoc keys table"
            );
            assert!(listed(&readme), "`{key}` is not in README's keys table");
        }
    }
}
