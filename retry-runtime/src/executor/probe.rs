//! One probe of a `#[resilient]` fn's declared return type, for the common case (a call the
//! macro did not read as streaming, whose policy does not require `Metered`): what a success
//! cost, and that no `Streamed` hides behind a type alias, in one method lookup, where two
//! probes took two (the compiler does this for every such function).
//!
//! Autoref specialization: `(&&&Probe::<R>::new()).spend_fn()` picks, most specific first,
//! - a `Streamed` success: refused by its bound, with the message that says why (the macro
//!   only recognises a streaming call when the signature says `Streamed<…>`; behind an alias
//!   the call would not be a streaming one: no first chunk awaited, no stream tracked);
//! - a `Metered` success: its `Metered::spend`, so workflow scopes count what it cost;
//! - anything else: zero.

use std::marker::PhantomData;

use futures_core::TryStream;

use super::Streamed;
use crate::spend::{Metered, Spend};

#[doc(hidden)]
/// The probe. Not part of the stable API.
pub struct Probe<R>(PhantomData<R>);

impl<R> Probe<R> {
    /// A probe for `R`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

#[doc(hidden)]
/// Implemented for nothing: its message is the error.
#[diagnostic::on_unimplemented(
    message = "this #[resilient] fn returns a `Streamed` stream under another name: write `Result<Streamed<S>, E>` in its signature",
    label = "a `Streamed` behind a type alias",
    note = "the macro reads the signature to make a call a streaming one (retried until its first chunk, then followed to its end); an alias hides the `Streamed`"
)]
pub trait StreamBehindAlias {}

#[doc(hidden)]
/// The `Streamed` arm of [`Probe`]: selected, then refused by its bound.
pub trait ProbeHiddenStream<R> {
    /// Refused.
    fn spend_fn(self) -> fn(&R) -> Spend
    where
        Self: Sized + StreamBehindAlias,
    {
        no_spend::<R>
    }
}

impl<S: TryStream, E> ProbeHiddenStream<Result<Streamed<S>, E>>
    for &&&Probe<Result<Streamed<S>, E>>
{
}

#[doc(hidden)]
/// The `Metered` arm of [`Probe`].
pub trait ProbeSpend<R> {
    /// `Metered::spend` of a success.
    fn spend_fn(self) -> fn(&R) -> Spend;
}

impl<T: Metered, E> ProbeSpend<Result<T, E>> for &&Probe<Result<T, E>> {
    fn spend_fn(self) -> fn(&Result<T, E>) -> Spend {
        metered::<T, E>
    }
}

#[doc(hidden)]
/// The fallback arm of [`Probe`].
pub trait ProbeNoSpend<R> {
    /// Zero: the success type does not say what it cost.
    fn spend_fn(self) -> fn(&R) -> Spend;
}

impl<R> ProbeNoSpend<R> for &Probe<R> {
    fn spend_fn(self) -> fn(&R) -> Spend {
        no_spend::<R>
    }
}

fn metered<T: Metered, E>(outcome: &Result<T, E>) -> Spend {
    match outcome {
        Ok(value) => value.spend(),
        Err(_) => Spend::ZERO,
    }
}

fn no_spend<R>(_: &R) -> Spend {
    Spend::ZERO
}
