//! Money and tokens, as integers: what an attempt cost.
//!
//! No floats in accounting: dollars are held as micro-dollars (`u64`), so a million
//! one-cent charges add up to exactly $10,000.00. Floats appear only at the edge, in
//! [`Price::per_million`], converted once.

use retry_grammar::{AmountError, AmountUnit};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

/// What something cost: micro-dollars and tokens.
///
/// ```
/// use retry_runtime::Spend;
///
/// let s = Spend::from_micros(12_300) + Spend::from_tokens(1_234);
/// assert_eq!(s.to_string(), "$0.0123, 1,234 tok");
/// assert_eq!(Spend::from_micros(1_000_000).to_string(), "$1.00");
/// assert_eq!(Spend::from_tokens(20_000).to_string(), "20,000 tok");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Spend {
    micros: u64,
    tokens: u64,
}

impl Spend {
    /// Nothing.
    pub const ZERO: Spend = Spend {
        micros: 0,
        tokens: 0,
    };

    /// An amount of money in micro-dollars (1 USD = 1,000,000).
    pub const fn from_micros(micros: u64) -> Self {
        Self { micros, tokens: 0 }
    }

    /// A number of tokens.
    pub const fn from_tokens(tokens: u64) -> Self {
        Self { micros: 0, tokens }
    }

    /// Money and tokens together.
    pub const fn new(micros: u64, tokens: u64) -> Self {
        Self { micros, tokens }
    }

    /// Micro-dollars.
    pub const fn micros(&self) -> u64 {
        self.micros
    }

    /// Tokens.
    pub const fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The larger of each part: what the more expensive of two attempts cost, in either unit.
    pub const fn max_each(self, other: Spend) -> Spend {
        Spend::new(
            if self.micros >= other.micros {
                self.micros
            } else {
                other.micros
            },
            if self.tokens >= other.tokens {
                self.tokens
            } else {
                other.tokens
            },
        )
    }

    /// Whether nothing was spent.
    pub const fn is_zero(&self) -> bool {
        self.micros == 0 && self.tokens == 0
    }

    /// The amount in `unit`.
    pub const fn amount(&self, unit: Unit) -> u64 {
        match unit {
            Unit::Usd => self.micros,
            Unit::Tokens => self.tokens,
        }
    }
}

impl Add for Spend {
    type Output = Spend;
    fn add(self, other: Spend) -> Spend {
        Spend {
            micros: self.micros.saturating_add(other.micros),
            tokens: self.tokens.saturating_add(other.tokens),
        }
    }
}

impl AddAssign for Spend {
    fn add_assign(&mut self, other: Spend) {
        *self = *self + other;
    }
}

impl Sum for Spend {
    fn sum<I: Iterator<Item = Spend>>(iter: I) -> Spend {
        iter.fold(Spend::ZERO, Add::add)
    }
}

impl fmt::Display for Spend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.micros, self.tokens) {
            (0, 0) => f.write_str("$0.00"),
            (m, 0) => write_usd(f, m),
            (0, t) => write_tokens(f, t),
            (m, t) => {
                write_usd(f, m)?;
                f.write_str(", ")?;
                write_tokens(f, t)
            }
        }
    }
}

/// `$1.00`, `$0.0123`, `$0.000001`: at least two decimals, as many as the amount needs.
pub(crate) fn write_usd(f: &mut fmt::Formatter<'_>, micros: u64) -> fmt::Result {
    let dollars = micros / 1_000_000;
    let fraction = format!("{:06}", micros % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    let fraction = if fraction.len() < 2 {
        format!("{fraction:0<2}")
    } else {
        fraction.to_string()
    };
    write!(f, "${}.{}", group(dollars), fraction)
}

pub(crate) fn write_tokens(f: &mut fmt::Formatter<'_>, tokens: u64) -> fmt::Result {
    write!(f, "{} tok", group(tokens))
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The unit a budget is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Unit {
    /// US dollars, counted in micro-dollars.
    Usd,
    /// Tokens.
    Tokens,
}

/// Token counts of one request, as the provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input: u64,
    /// Completion (output) tokens.
    pub output: u64,
}

/// A model's price per million tokens, held as integer micro-dollars per million tokens.
///
/// ```
/// use retry_runtime::{Price, Usage};
///
/// // $2.50 per million input tokens, $10.00 per million output tokens.
/// let price = Price::per_million(2.50, 10.00);
/// let spend = price.cost(Usage { input: 1_000, output: 500 });
/// assert_eq!(spend.micros(), 2_500 + 5_000); // $0.0075
/// assert_eq!(spend.tokens(), 1_500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Price {
    input_micros_per_million: u64,
    output_micros_per_million: u64,
}

impl Price {
    /// Micro-dollars per million input and output tokens, exactly (what `[price."MODEL"]` in
    /// the configuration holds).
    pub const fn micros_per_million(input: u64, output: u64) -> Self {
        Self {
            input_micros_per_million: input,
            output_micros_per_million: output,
        }
    }

    /// Dollars per million input and output tokens. Negative or non-finite prices count as
    /// zero; this is the one place a float enters, converted once to micro-dollars.
    pub fn per_million(input_usd: f64, output_usd: f64) -> Self {
        let micros = |usd: f64| {
            if usd.is_finite() && usd > 0.0 {
                (usd * 1e6).round().min(u64::MAX as f64) as u64
            } else {
                0
            }
        };
        Self {
            input_micros_per_million: micros(input_usd),
            output_micros_per_million: micros(output_usd),
        }
    }

    /// What `usage` costs, rounded up to the micro-dollar (never under-count spend).
    pub fn cost(&self, usage: Usage) -> Spend {
        let part = |tokens: u64, rate: u64| u128::from(tokens) * u128::from(rate);
        // Each product fits a u128; their sum may not: saturate (an extreme bill is the
        // largest one, never a wrapped small one).
        let total = part(usage.input, self.input_micros_per_million)
            .saturating_add(part(usage.output, self.output_micros_per_million));
        let micros = total.div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64;
        Spend::new(micros, usage.input.saturating_add(usage.output))
    }
}

/// What a successful answer cost. Implement it for your reply type, so that budgets and
/// pools see real spend.
///
/// ```
/// use retry_runtime::{Metered, Price, Spend, Usage};
///
/// struct Reply { text: String, usage: Usage }
///
/// impl Metered for Reply {
///     fn spend(&self) -> Spend {
///         Price::per_million(0.15, 0.60).cost(self.usage)
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say what it cost, so a `budget` or `pool` cannot count it",
    note = "implement `retry_runtime::Metered` for `{Self}` (e.g. `Price::per_million(..).cost(usage)`)",
    note = "if `{Self}` comes from another crate, the orphan rule forbids that impl here: return a wrapper (`struct Reply(pub TheirAnswer);`) and implement `Metered` for it"
)]
pub trait Metered {
    /// What this answer cost.
    fn spend(&self) -> Spend;
}

impl Metered for Spend {
    fn spend(&self) -> Spend {
        *self
    }
}

impl<T: Metered> Metered for Box<T> {
    fn spend(&self) -> Spend {
        (**self).spend()
    }
}

impl<T: Metered> Metered for std::sync::Arc<T> {
    fn spend(&self) -> Spend {
        (**self).spend()
    }
}

// ---- what a cut attempt is billed ----

/// Say what the attempt in flight will be billed if the runtime cuts it (its `timeout` or the
/// call's `deadline`): a provider bills a request it has started on, the prompt at least,
/// though no answer ever arrives. Call it in a `#[resilient]` body before the request is
/// sent; the largest figure said in an attempt counts. The cut attempt is then charged it in
/// the call's budget, its pool and workflows, and its report. Outside an attempt that can be
/// cut, it does nothing.
///
/// ```
/// use retry_runtime::{bill_on_cut, observe, resilient, Rejected, Spend};
///
/// #[resilient(max = 1, timeout = "10ms")]
/// async fn slow() -> Result<u32, Rejected> {
///     bill_on_cut(Spend::from_micros(300)); // the prompt, priced
///     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///     Ok(1)
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let (_, report) = observe(slow()).await;
/// assert_eq!(report.spent(), Spend::from_micros(300));
/// # }
/// ```
pub fn bill_on_cut(spend: Spend) {
    // Kept with the attempt's context (a thread-local around each poll of the attempt).
    crate::context::raise_bill(spend.micros(), spend.tokens());
}

// ---- limits ----

/// A limit without room: which one, what is committed against it (in its unit), and the
/// limit. What a `Rejected::BudgetExhausted` and a `StopReason::BudgetExhausted` carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub scope: BudgetScope,
    pub spent: Spend,
    pub limit: Budget,
}

/// A spend limit in dollars or tokens.
///
/// ```
/// use retry_runtime::Budget;
///
/// assert_eq!(Budget::usd(1.00).to_string(), "$1.00");
/// assert_eq!(Budget::tokens(20_000).to_string(), "20,000 tok");
/// assert_eq!("0.10usd".parse::<Budget>().unwrap(), Budget::micros(100_000));
/// assert!("0.10eur".parse::<Budget>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Budget {
    unit: Unit,
    amount: u64,
}

impl Budget {
    /// A dollar limit. Negative or non-finite amounts are zero (nothing may be spent).
    pub fn usd(dollars: f64) -> Self {
        let micros = if dollars.is_finite() && dollars > 0.0 {
            (dollars * 1e6).round().min(u64::MAX as f64) as u64
        } else {
            0
        };
        Self::micros(micros)
    }

    /// A limit in micro-dollars.
    pub const fn micros(micros: u64) -> Self {
        Self {
            unit: Unit::Usd,
            amount: micros,
        }
    }

    /// A limit in tokens.
    pub const fn tokens(tokens: u64) -> Self {
        Self {
            unit: Unit::Tokens,
            amount: tokens,
        }
    }

    /// The unit.
    pub const fn unit(&self) -> Unit {
        self.unit
    }

    /// The limit in its unit (micro-dollars or tokens).
    pub const fn amount(&self) -> u64 {
        self.amount
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit {
            Unit::Usd => write_usd(f, self.amount),
            Unit::Tokens => write_tokens(f, self.amount),
        }
    }
}

/// Largest budget accepted: $1,000,000 or 10^12 tokens (the ledger holds 40 bits).
pub const MAX_MICROS: u64 = 1_000_000 * 1_000_000;

impl std::str::FromStr for Budget {
    type Err = String;

    /// `"0.10usd"`, `"5usd"`, `"20000tok"`.
    fn from_str(text: &str) -> Result<Self, String> {
        let forms = "write dollars as \"0.10usd\" or tokens as \"20000tok\"";
        let (number, unit) = if let Some(n) = text.strip_suffix("usd") {
            (n, Unit::Usd)
        } else if let Some(n) = text.strip_suffix("tok") {
            (n, Unit::Tokens)
        } else {
            return Err(format!("`{text}` has no known unit; {forms}"));
        };
        let too_big =
            || format!("`{text}` is too large: at most $1,000,000 or 1,000,000,000,000 tokens");
        let grammar_unit = match unit {
            Unit::Usd => AmountUnit::Usd,
            Unit::Tokens => AmountUnit::Tokens,
        };
        let amount =
            retry_grammar::amount(number, grammar_unit, MAX_MICROS).map_err(|e| match e {
                AmountError::NotPlain => format!("`{text}` is not a plain amount; {forms}"),
                AmountError::TooManyDecimals => {
                    format!("`{text}` has more than six decimals (micro-dollars)")
                }
                AmountError::FractionalTokens => format!("`{text}`: tokens are whole numbers"),
                AmountError::TooLarge => too_big(),
            })?;
        if amount == 0 {
            return Err(format!("`{text}` is zero: nothing could ever be spent"));
        }
        Ok(Budget { unit, amount })
    }
}

/// Which limit a call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BudgetScope {
    /// The attribute's per-call `budget`.
    Call,
    /// A [`workflow`](crate::budget::workflow) scope the call ran inside.
    Workflow,
    /// The named pool (`pool = "…"`).
    Pool(&'static str),
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetScope::Call => f.write_str("call budget"),
            BudgetScope::Workflow => f.write_str("workflow budget"),
            BudgetScope::Pool(name) => write!(f, "pool `{name}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_usage_saturates_and_never_wraps() {
        let price = Price::per_million(f64::MAX, f64::MAX);
        let usage = Usage {
            input: u64::MAX,
            output: u64::MAX,
        };
        let cost = price.cost(usage);
        assert_eq!(cost.micros(), u64::MAX);
        assert_eq!(cost.tokens(), u64::MAX);
    }

    #[test]
    fn display() {
        assert_eq!(Spend::ZERO.to_string(), "$0.00");
        assert_eq!(Spend::from_micros(1).to_string(), "$0.000001");
        assert_eq!(Spend::from_micros(100_000).to_string(), "$0.10");
        assert_eq!(
            Spend::from_micros(1_234_567_890).to_string(),
            "$1,234.56789"
        );
        assert_eq!(Spend::from_tokens(999).to_string(), "999 tok");
        assert_eq!(Spend::from_tokens(1_000_000).to_string(), "1,000,000 tok");
    }

    #[test]
    fn a_million_cents_is_exact() {
        let total: Spend = (0..1_000_000).map(|_| Spend::from_micros(10_000)).sum();
        assert_eq!(total.micros(), 10_000_000_000);
    }

    #[test]
    fn price_rounds_up() {
        let p = Price::per_million(0.15, 0.60);
        assert_eq!(
            p.cost(Usage {
                input: 1,
                output: 0
            })
            .micros(),
            1
        );
        assert_eq!(
            p.cost(Usage {
                input: 1_000_000,
                output: 1_000_000
            })
            .micros(),
            750_000
        );
        assert_eq!(
            Price::per_million(-1.0, f64::NAN)
                .cost(Usage {
                    input: 5,
                    output: 5
                })
                .micros(),
            0
        );
    }
}
