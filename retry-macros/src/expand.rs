//! Rewrite the function body into a loop that drives the runtime's executor.
//!
//! The signature is kept as written (only `mut` on owned arguments moves inside, where the
//! per-attempt copy lives); the body becomes one attempt, re-run by the loop. Generated code
//! names nothing but `<crate>::__private::…`, so it survives user code that shadows `Result`,
//! `Ok`, `core` and friends.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, Type};

use crate::attr::{Errors, Policy, RetryOn};

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

/// Checks on the function itself (not the attribute): async, not const, a return type,
/// arguments we can re-run the body with.
pub fn check_fn(item: &ItemFn, errors: &mut Errors) {
    let sig = &item.sig;
    if let Some(c) = &sig.constness {
        errors.at(c, "#[resilient] cannot be used on a `const fn`: retrying means waiting, which needs an `async fn`");
    }
    if sig.asyncness.is_none() {
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

/// The whole rewritten function.
pub fn expand(
    mut item: ItemFn,
    policy: &Policy,
    retry_on: Option<(&syn::Path, &RetryOn)>,
) -> TokenStream {
    let krate = match &policy.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::retry_runtime),
    };
    let p = quote!(#krate::__private);
    let name = item.sig.ident.to_string();

    // Owned arguments: a fresh copy per attempt, made inside the attempt so the body may move it.
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
        let ty_span = t.ty.span();
        let clone = quote_spanned!(ty_span=> #p::CloneForAttempt::clone_for_attempt);
        copies.push(quote! { let #mutability #ident = #clone(&#ident); });
    }

    let backoff = format_ident!("{}", policy.backoff);
    let max = policy.max;
    let nanos = |n: u64| quote!(#p::Duration::from_nanos(#n));
    let base = nanos(policy.base.nanos);
    let cap = nanos(policy.cap.nanos);
    let max_retry_after = nanos(policy.max_retry_after.nanos);
    let mut builder = quote! {
        #p::Policy::new(#p::concat!(#p::module_path!(), "::", #name))
            .with_backoff(#p::Backoff::#backoff)
            .with_max_attempts(#max)
            .with_base(#base)
            .with_cap(#cap)
            .with_max_retry_after(#max_retry_after)
    };
    if let Some(t) = policy.timeout {
        let t = nanos(t.nanos);
        builder.extend(quote!(.with_timeout(#t)));
    }
    if let Some(name) = &policy.breaker {
        builder.extend(quote!(.with_breaker(#name)));
    }
    if let Some(d) = policy.deadline {
        let d = nanos(d.nanos);
        builder.extend(quote!(.with_deadline(#d)));
    }
    // `#[retry_on]` is consumed here before name resolution sees it; naming its path keeps
    // the user's `use retry_runtime::retry_on` from being reported as unused.
    let retry_on_use = retry_on.map(|(path, _)| {
        quote! {
            #[allow(unused_imports)]
            use #path as _;
        }
    });
    if let Some((_, on)) = retry_on {
        let ranges = on
            .ranges
            .iter()
            .map(|(a, b)| quote!(#p::CodeRange::range(#a, #b)));
        let (timeout, transport) = (on.timeout, on.transport);
        builder.extend(quote! {
            .with_retry_on(#p::RetryOn::new(&[#(#ranges),*], #timeout, #transport))
        });
    }

    // Internal names are def-site-ish (mixed_site) so the user's body cannot see or clash with them.
    let policy_ident = syn::Ident::new("__RESILIENT_POLICY", Span::mixed_site());
    let site = syn::Ident::new("__RESILIENT_SITE", Span::mixed_site());
    let call = syn::Ident::new("__resilient_call", Span::mixed_site());
    let outcome = syn::Ident::new("__resilient_outcome", Span::mixed_site());
    let result = syn::Ident::new("__resilient_result", Span::mixed_site());

    // Guarded attempts need `E: From<Rejected>`; a missing impl is reported at the key
    // (`timeout`, `deadline`, `breaker`) that made the policy able to refuse or cut one.
    let attempt = match policy.reject_span {
        Some(span) => quote_spanned!(span=> attempt_guarded),
        None => quote!(attempt),
    };
    // A missing `Classify` impl is reported at the return type.
    let settle = quote_spanned!(item.sig.output.span()=> settle);

    let body = &item.block;
    let new_body = quote! {{
        #retry_on_use
        static #policy_ident: #p::Policy = #builder;
        static #site: #p::CallSite<'static> = #p::CallSite::new(&#policy_ident);
        let mut #call = #p::Call::start(&#site);
        loop {
            let #outcome = #call.#attempt(async {
                #(#copies)*
                #body
            }).await;
            match #call.#settle(#outcome).await {
                #p::Step::Retry => {}
                #p::Step::Return(#result) => return #result,
            }
        }
    }};
    let attrs = &item.attrs;
    let vis = &item.vis;
    let sig = &item.sig;
    quote!(#(#attrs)* #vis #sig #new_body)
}
