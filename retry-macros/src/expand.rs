//! Rewrite the function body into a loop that drives the runtime's executor.
//!
//! The signature is kept as written (only `mut` on owned arguments moves inside, where the
//! per-attempt copy lives); the body becomes one attempt, re-run by the loop. Generated code
//! names nothing but `<crate>::__private::…`, so it survives user code that shadows `Result`,
//! `Ok`, `core` and friends.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, ToTokens};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, Type};

use crate::attr::{Errors, Fallback, Policy, RetryOn};

/// Remove our helper attributes (`#[retry_on]`) from the fn, returning them.
pub fn take_retry_on(item: &mut ItemFn) -> Vec<syn::Attribute> {
    let (ours, theirs) = item
        .attrs
        .drain(..)
        .partition(|a| is_named(a.path(), "retry_on"));
    item.attrs = theirs;
    ours
}

/// Whether an attribute path is ours by its last segment (`retry_on`, `retry_runtime::retry_on`).
pub fn is_named(path: &syn::Path, name: &str) -> bool {
    path.segments.last().is_some_and(|s| s.ident == name)
}

/// Remove `#[key]` from the parameters, returning the marked names and the attributes.
pub fn take_keys(item: &mut ItemFn, errors: &mut Errors) -> Vec<(syn::Ident, TokenStream)> {
    let mut keys = Vec::new();
    for arg in item.sig.inputs.iter_mut() {
        let FnArg::Typed(t) = arg else { continue };
        let before = t.attrs.len();
        let mut marker = None;
        t.attrs.retain(|a| {
            let ours = a.path().is_ident("key");
            if ours {
                marker = Some(a.to_token_stream());
            }
            !ours
        });
        if t.attrs.len() == before {
            continue;
        }
        match (&*t.pat, marker) {
            (Pat::Ident(p), Some(marker)) => keys.push((p.ident.clone(), marker)),
            (other, _) => errors.at(other, "#[key] needs a named parameter"),
        }
    }
    keys
}

/// The cache key expression for `fallback = cached`, checking that there is exactly one way
/// to form it.
pub fn cache_key(
    policy: &Policy,
    keys: &[(syn::Ident, TokenStream)],
    errors: &mut Errors,
) -> Option<TokenStream> {
    let Some(cached) = policy.cached_span() else {
        // An unreadable `fallback = …` has its own error; do not add one per #[key].
        if policy.fallback_written {
            return None;
        }
        for (_, marker) in keys {
            errors.at(
                marker,
                "#[key] only matters with `fallback = cached`: remove it, or add the fallback",
            );
        }
        return None;
    };
    let rt = syn::Ident::new("__resilient_rt", Span::mixed_site());
    match (&policy.key, keys.is_empty()) {
        (Some(expr), true) => Some(quote!(#rt::cache_key(&(#expr)))),
        (Some(expr), false) => {
            errors.at(
                expr,
                "the cache key is given twice: use `key = <expr>` or #[key] on parameters, not both",
            );
            None
        }
        (None, false) => {
            // One bound per parameter, spanned at it: a `#[key]` that is not `Hash` is
            // reported under its own name, not under the whole attribute as a tuple.
            let hasher = syn::Ident::new("__resilient_hasher", Span::mixed_site());
            let parts = keys.iter().map(|(ident, _)| {
                quote::quote_spanned!(ident.span()=> #rt::key_part(&mut #hasher, &#ident);)
            });
            Some(quote!({
                let mut #hasher = #rt::KeyHasher::new();
                #(#parts)*
                #hasher.finish()
            }))
        }
        (None, true) => {
            errors.push(syn::Error::new(
                cached,
                "`fallback = cached` needs a cache key: mark the parameters that identify the answer with #[key] (`#[key] prompt: &str`), or give `key = <expr>`",
            ));
            None
        }
    }
}

/// A fallback function is called with the same arguments, so each needs a name.
pub fn check_fallback_args(item: &ItemFn, policy: &Policy, errors: &mut Errors) {
    if !policy
        .fallback
        .iter()
        .any(|f| matches!(f, Fallback::Function(_)))
    {
        return;
    }
    for arg in &item.sig.inputs {
        if let FnArg::Typed(t) = arg {
            if let Pat::Wild(w) = &*t.pat {
                errors.at(w, "a fallback function is called with the same arguments, so this one needs a name");
            }
        }
    }
}

/// Checks on the function itself (not the attribute): async, not const, a return type,
/// arguments we can re-run the body with.
pub fn check_fn(item: &ItemFn, errors: &mut Errors) {
    let sig = &item.sig;
    if let Some(c) = &sig.constness {
        errors.at(c, "#[resilient] cannot be used on a `const fn`: retrying means waiting, which needs an `async fn`");
    }
    // A `const fn` already has its own error; "not async" would only repeat it.
    if sig.asyncness.is_none() && sig.constness.is_none() {
        errors.at(
            sig.fn_token,
            "#[resilient] needs an `async fn`: retries wait between attempts, and waiting must not block a thread",
        );
    }
    if let syn::ReturnType::Default = sig.output {
        errors.at(
            &sig.ident,
            "a #[resilient] fn must return `Result<T, E>` with `E: Classify`: the error is what decides whether to retry",
        );
    }
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) if r.reference.is_none() => errors.at(
                r,
                "#[resilient] methods cannot take `self` by value: each attempt re-runs the body, so take `&self` (or `&mut self`)",
            ),
            FnArg::Receiver(_) => {}
            FnArg::Typed(t) => match &*t.pat {
                Pat::Ident(p) if p.subpat.is_none() && p.by_ref.is_none() => {}
                Pat::Wild(_) => {}
                other => errors.at(
                    other,
                    "#[resilient] needs a plain name for each argument (it copies arguments for each attempt); destructure inside the body",
                ),
            },
        }
    }
}

/// `use <path> as _;`, spanned at the user's `retry_on` path: `#[retry_on]` is consumed before
/// name resolution sees it, and naming its path keeps the user's `use …::retry_on` from being
/// reported as unused (and a missing import is reported at the path).
pub fn use_retry_on(path: Option<&syn::Path>) -> TokenStream {
    let Some(path) = path else {
        return TokenStream::new();
    };
    respan(
        quote! {
            #[allow(unused_imports)]
            use #path as _;
        },
        path.span(),
    )
}

/// Move every token of `tokens` to the location of `span` (errors then point there), keeping
/// each token's own hygiene, so internal names stay invisible to user code.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(g.span().located_at(span));
                tt = TokenTree::Group(group);
            } else {
                tt.set_span(tt.span().located_at(span));
            }
            tt
        })
        .collect()
}

/// The whole rewritten function.
/// Whether the function is a streaming call: it returns `Result<Streamed<…>, …>` (the last
/// segment of the success type's path is `Streamed`).
pub fn returns_stream(item: &ItemFn) -> bool {
    let syn::ReturnType::Type(_, ty) = &item.sig.output else {
        return false;
    };
    let Type::Path(path) = &**ty else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    matches!(
        args.args.first(),
        Some(syn::GenericArgument::Type(Type::Path(ok)))
            if ok.path.segments.last().is_some_and(|s| s.ident == "Streamed")
    )
}

pub fn expand(
    mut item: ItemFn,
    policy: &Policy,
    retry_on: Option<&RetryOn>,
    use_retry_on: TokenStream,
    cache_key: Option<TokenStream>,
    streaming: bool,
) -> TokenStream {
    let krate = match &policy.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::retry_runtime),
    };
    // Internal names: locals are mixed-site (invisible to the body); items cannot be hidden
    // that way, so the statics live in a block the body is not in.
    let rt = syn::Ident::new("__resilient_rt", Span::mixed_site());
    let site = syn::Ident::new("__RESILIENT_SITE", Span::mixed_site());
    let call = syn::Ident::new("__resilient_call", Span::mixed_site());
    let outcome = syn::Ident::new("__resilient_outcome", Span::mixed_site());
    let result = syn::Ident::new("__resilient_result", Span::mixed_site());
    let spend_of = syn::Ident::new("__resilient_spend_of", Span::mixed_site());
    let name = item.sig.ident.to_string();

    // Owned arguments: a fresh copy per attempt, made inside the attempt so the body may move
    // it. The statement is spanned at the argument's type, where a missing `Clone` is reported.
    let mut copies = Vec::new();
    for arg in item.sig.inputs.iter_mut() {
        let FnArg::Typed(t) = arg else { continue };
        let Pat::Ident(pat) = &mut *t.pat else {
            continue;
        };
        if matches!(&*t.ty, Type::Reference(_)) {
            continue;
        }
        let ident = pat.ident.clone();
        let mutability = pat.mutability.take();
        copies.push(respan(
            quote! { let #mutability #ident = #rt::CloneForAttempt::clone_for_attempt(&#ident); },
            t.ty.span(),
        ));
    }

    let backoff = format_ident!("{}", policy.backoff);
    let max = policy.max;
    // The site's label (its `name`, or `module::fn`), and where it is written, so that two
    // sites reporting under one label can be told apart in the WARN that says so.
    let label = match &policy.label {
        Some(label) => quote!(#label),
        None => {
            let tail = format!("::{name}");
            quote!(#rt::concat!(#rt::module_path!(), #tail))
        }
    };
    // Where the site is written, as `file!()` and `line!()` would say (one literal: two
    // macro calls fewer for the compiler to expand per function).
    let here = proc_macro::Span::call_site();
    let site_tail = format!("::{name} at {}:{}", here.file(), here.line());
    // The attribute's values as plain data (nanoseconds, amounts), made a `Policy` at the
    // site's first call: the compiler evaluates every function's `static`, and literals cost
    // it least. Unset keys take `Policy::new`'s values.
    let mut fields = quote! {
        name: #label,
        site: #rt::concat!(#rt::module_path!(), #site_tail),
        backoff: #rt::Backoff::#backoff,
        max_attempts: #max,
    };
    let (base, cap, max_retry_after) = (
        policy.base.nanos,
        policy.cap.nanos,
        policy.max_retry_after.nanos,
    );
    fields.extend(quote!(base_ns: #base, cap_ns: #cap, max_retry_after_ns: #max_retry_after,));
    let some = |field: TokenStream, value: TokenStream| quote!(#field: #rt::Some(#value),);
    let durations = [
        (quote!(timeout_ns), policy.timeout),
        (quote!(deadline_ns), policy.deadline),
        (quote!(stale_for_ns), policy.stale_for),
        (quote!(queue_wait_ns), policy.queue_wait),
        (quote!(first_token_ns), policy.first_token),
        (quote!(idle_ns), policy.idle),
    ];
    for (field, d) in durations {
        if let Some(d) = d {
            let n = d.nanos;
            fields.extend(some(field, quote!(#n)));
        }
    }
    let names = [
        (quote!(breaker), &policy.breaker),
        (quote!(pool), &policy.pool),
        (quote!(pace), &policy.pace),
    ];
    for (field, name) in names {
        if let Some(name) = name {
            fields.extend(some(field, quote!(#name)));
        }
    }
    for (field, amount) in [
        (quote!(budget), &policy.budget),
        (quote!(max_cost), &policy.max_cost),
    ] {
        if let Some(amount) = amount {
            let (n, tokens) = (amount.amount, amount.tokens);
            fields.extend(some(field, quote!((#n, #tokens))));
        }
    }
    if let Some(on) = retry_on {
        let ranges = on
            .ranges
            .iter()
            .map(|(a, b)| quote!(#rt::CodeRange { start: #a, end: #b }));
        let (timeout, transport) = (on.timeout, on.transport);
        fields.extend(some(
            quote!(retry_on),
            quote!((&[#(#ranges),*], #timeout, #transport)),
        ));
    }

    let ret = match &item.sig.output {
        syn::ReturnType::Type(_, ty) => Some(&**ty),
        syn::ReturnType::Default => None,
    };
    let ret_span = ret.map_or_else(Span::call_site, |t| t.span());
    // The return type, if it can be named inside the body (no `impl Trait`).
    let nameable_ret = ret.filter(|ty| !mentions_impl(ty));

    // What a success cost: `Metered` is required where a budget or pool counts it (reported
    // at that key); elsewhere it is used when the success type has it, so workflows see it.
    // In the common case (not a stream, `Metered` not required) one probe of the declared
    // type says both what a success cost and that no `Streamed` hides behind an alias (an
    // error at the return type); elsewhere the two are asked apart.
    let probe_once = !streaming && policy.metered_span.is_none() && nameable_ret.is_some();
    let spend_fn = match (policy.metered_span, ret) {
        (Some(span), _) => respan(quote!(#rt::spend_of_metered), span),
        (None, Some(ty)) if probe_once => {
            respan(quote!((&&&#rt::Probe::<#ty>::new()).spend_fn()), ret_span)
        }
        (None, Some(ty)) if nameable_ret.is_some() => {
            quote!((&&#rt::SpendProbe::<#ty>(#rt::PhantomData)).spend_fn())
        }
        _ => quote!(#rt::no_spend),
    };
    let probe_traits = if probe_once {
        quote!(use #rt::{ProbeHiddenStream as _, ProbeNoSpend as _, ProbeSpend as _};)
    } else {
        quote!(use #rt::{ProbeAny as _, ProbeMetered as _, ProbeNotStreamed as _, ProbeStreamed as _};)
    };

    // Guarded attempts need `E: From<Rejected>`; a missing impl is reported at the key
    // (`timeout`, `deadline`, `breaker`, `pool`) that made the policy able to refuse or cut one.
    // The body's statements, not its block: `async { { Ok(1) } }` would make rustc's
    // `unused_braces` fire on every one-line body, failing a `-D warnings` build.
    let stmts = &item.block.stmts;
    // A policy whose first attempt nothing can cut and only a breaker can refuse, and not a
    // stream: that attempt may run before (and, when it succeeds, without) the call's full
    // state.
    let fast = policy.timeout.is_none()
        && policy.deadline.is_none()
        && policy.pool.is_none()
        && policy.pace.is_none()
        && !streaming;
    let attempt_body = quote!(async { #(#copies)* #(#stmts)* });
    let attempt_fut = syn::Ident::new("__resilient_attempt", Span::mixed_site());
    let body_in = if fast {
        quote!(#attempt_fut)
    } else {
        attempt_body.clone()
    };
    // A guarded attempt awaits its admission (a future the runtime compiled once), then the
    // attempt under its limit (the only part generic over the body).
    let admitted = syn::Ident::new("__resilient_admitted", Span::mixed_site());
    let run_attempt = match policy.reject_span {
        Some(span) => {
            let head = respan(quote!(#call.run), span);
            let tail = respan(quote!(.await), span);
            quote!({
                let #admitted = #call.admit().await;
                #head(#admitted, #body_in)#tail
            })
        }
        None => quote!(#call.attempt(#body_in).await),
    };
    // The fast first attempt awaits a future of its own: a small one, where the full path's
    // (which holds the gate's waits) would be copied into place on every call.
    let run_attempt = if fast {
        let check = match policy.reject_span {
            Some(_) => quote!(#call.fast_first_guarded()),
            None => quote!(#call.fast_first()),
        };
        quote! {{
            let #attempt_fut = #attempt_body;
            if #check {
                #call.run_fast(#attempt_fut).await
            } else {
                #run_attempt
            }
        }}
    } else {
        run_attempt
    };
    // A missing `Classify` impl, or a return type that is not a `Result`, is reported at the
    // return type.
    let settle = respan(quote!(#call.settle(#outcome, #spend_of)), ret_span);

    // A streaming call's attempt ends at its stream's first chunk (a missing `From<Rejected>`
    // on the error type, or a stream of another error type, is reported at the return type).
    let first_chunk = streaming.then(|| {
        let wait = respan(quote!(#call.first_chunk(#outcome)), ret_span);
        quote!(let #outcome = #wait.await;)
    });
    let error = syn::Ident::new("__resilient_error", Span::mixed_site());
    let attempts = if fast {
        // The fast first attempt's policies: settled synchronously, so that a success awaits
        // nothing more.
        quote! {
            loop {
                let #outcome = #run_attempt;
                match #settle {
                    #rt::Settled::Return(#result) => break #result,
                    #rt::Settled::Retry(#error) => {
                        if let #rt::Step::Return(#result) = #call.wait(#error).await {
                            break #result;
                        }
                    }
                }
            }
        }
    } else {
        // Elsewhere one await of the runtime's after each attempt (`Call::after`: settle, and
        // for a retry wait; generic over the result type only, so compiled once for every
        // function returning it): the function's own state machine is the smaller for it.
        let after = respan(quote!(#call.after(#outcome, #spend_of)), ret_span);
        quote! {
            loop {
                let #outcome = #run_attempt;
                #first_chunk
                if let #rt::Some(#result) = #after.await {
                    break #result;
                }
            }
        }
    };

    // A `Streamed` the signature did not show (a type alias) is an error at the return type.
    // The declared type, not the result's (whose inference the probe must not steer).
    let not_a_stream = match ret {
        Some(ty) if !probe_once && nameable_ret.is_some() => {
            let probe = respan(
                quote!((&&#rt::StreamProbe::<#ty>::new()).not_a_stream()),
                ret_span,
            );
            quote!(#probe;)
        }
        _ => quote!(),
    };
    let key = syn::Ident::new("__resilient_key", Span::mixed_site());
    let key_stmt = cache_key.map(|k| quote!(let #key: u64 = #k;));
    let again = syn::Lifetime::new("'__resilient_again", Span::mixed_site());
    let chain_label = syn::Lifetime::new("'__resilient_chain", Span::mixed_site());
    let has_queue = policy
        .fallback
        .iter()
        .any(|f| matches!(f, Fallback::Queue(_)));

    // A streaming call goes with its stream: its report is delivered when the stream ends.
    // (A stream is never a value a probe must catch behind an alias: the signature said so.)
    let (finish, not_a_stream) = if streaming {
        (quote!(#call.done_stream(#result)), quote!())
    } else {
        (quote!(#call.done(#result)), not_a_stream)
    };
    // `fallback = cached` alone: one call at the end (remember, serve if the call ended in an
    // outage, finish), where a chain needs its steps spelled out.
    let cached_only = matches!(policy.fallback.as_slice(), [Fallback::Cached(_)]);
    let body = if let (true, false, Some(_)) = (cached_only, streaming, &key_stmt) {
        // A missing `Clone` is reported at the return type.
        let finish = respan(quote!(#call.done_cached(#key, #result)), ret_span);
        quote! {
            let #result = #attempts;
            #not_a_stream
            #finish
        }
    } else if policy.fallback.is_empty() {
        quote! {
            let #result = #attempts;
            #not_a_stream
            #finish
        }
    } else {
        // Remember good answers (a missing `Clone` is reported at the return type).
        let store = key_stmt.as_ref().map(|_| {
            let store = respan(quote!(#call.cache_store(#key, &#result)), ret_span);
            quote!(#store;)
        });
        let args = fallback_args(&item.sig, &rt);
        let steps = policy.fallback.iter().map(|step| match step {
            Fallback::Cached(_) => {
                let serve = respan(quote!(#call.serve_cached(#key)), ret_span);
                quote! {
                if let #rt::Some(#outcome) = #serve {
                    #result = #outcome;
                    break #chain_label;
                }
                }
            }
            Fallback::Function(path) => {
                let name = path.to_token_stream().to_string().replace(' ', "");
                // Spanned at the path: a signature mismatch is reported there.
                let call_fn = respan(
                    quote!(#call.serve_fn(#name, #path(#(#args),*))),
                    path.span(),
                );
                quote! {
                    #result = #call_fn.await;
                    if #rt::Outcome::is_ok(&#result) {
                        break #chain_label;
                    }
                }
            }
            Fallback::Queue(_) => quote! {
                match #call.park(#result).await {
                    #rt::Step::Retry => continue #again,
                    #rt::Step::Return(#outcome) => #result = #outcome,
                }
            },
        });
        let run = quote! {
            let mut #result = #attempts;
            #not_a_stream
            #store
            if #call.falls_back(&#result) {
                #chain_label: {
                    #(#steps)*
                }
            }
            #finish
        };
        if has_queue {
            quote!(#again: loop { return { #run }; })
        } else {
            run
        }
    };

    let start = if fast {
        quote!(#rt::FastCall::start_static)
    } else {
        quote!(#rt::Call::start_static)
    };
    let new_body = quote! {{
        #use_retry_on
        use #krate::__private as #rt;
        #[allow(unused_imports)]
        #probe_traits
        #key_stmt
        let #spend_of = #spend_fn;
        let mut #call = {
            static #site: #rt::CallSite<'static> =
                #rt::CallSite::from_parts(#rt::PolicyParts { #fields ..#rt::PolicyParts::DEFAULT });
            #start(&#site)
        };
        #body
    }};
    let attrs = &item.attrs;
    let vis = &item.vis;
    let sig = &item.sig;
    quote!(#(#attrs)* #vis #sig #new_body)
}

/// The arguments a fallback function is called with: the same ones, re-borrowed, or copied
/// when owned (the call may go on after the fallback, e.g. from the queue).
fn fallback_args(sig: &syn::Signature, rt: &syn::Ident) -> Vec<TokenStream> {
    sig.inputs
        .iter()
        .map(|arg| match arg {
            FnArg::Receiver(r) if r.mutability.is_some() => quote!(&mut *self),
            FnArg::Receiver(_) => quote!(self),
            FnArg::Typed(t) => {
                let Pat::Ident(p) = &*t.pat else {
                    return quote!(_);
                };
                let ident = &p.ident;
                match &*t.ty {
                    Type::Reference(r) if r.mutability.is_some() => quote!(&mut *#ident),
                    Type::Reference(_) => quote!(#ident),
                    _ => quote!(#rt::CloneForAttempt::clone_for_attempt(&#ident)),
                }
            }
        })
        .collect()
}

/// Whether a type mentions `impl Trait` (which cannot be named inside the body).
fn mentions_impl(ty: &Type) -> bool {
    fn walk(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|tt| match tt {
            TokenTree::Ident(i) => i == "impl",
            TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(ty.to_token_stream())
}
