//! Run-time configuration: what the attribute cannot know at compile time, such as how many
//! failures open the `openai` breaker.
//!
//! ```toml
//! [breaker.openai]
//! failures = 30            # a run of this many outage failures (no answer between) opens it;
//!                          # longer when failures were already common (see `regime`)
//! window = "60s"           # failures further apart than this are not one run
//! failure_rate = "50%"     # instead: `failures` inside `window` that are at least this share
//!                          # of the calls since the first of them (default 0: the run rule)
//! cooldown = "5s"          # how long an open breaker rejects before probing
//! probes = 1               # calls admitted while half-open
//! count_429 = false        # a rate limit means "slow down", not "down"
//! adaptive = true          # read the regime (brownout, overload, outage) and adapt to it
//! retry_ratio = 0.2        # retries allowed per first attempt while healthy (also "20%")
//! retry_ratio_max = 2.0    # the most a brownout raises it to
//! retry_step = 0.2         # what a second of brownout adds (overload halves it each second)
//! min_retries_per_sec = 1  # floor of the retry budget
//!
//! queue_len = 100         # callers that may wait in line (`fallback = queue`)
//! queue_release_per_sec = 10  # released at most this fast once it admits again
//!
//! [pace.openai]
//! rpm = 500                # known limits, if any; without them the rate is learned (adaptive)
//! tpm = 200000
//! adaptive = true
//! burst = "1s"             # how much of the known limits may go at once after an idle spell
//! max_wait = "5s"          # the longest a call waits in line ("none": up to its deadline)
//!
//! [fallback]
//! cache_capacity = 1024    # answers each `fallback = cached` call site keeps (1 to 1,000,000)
//!
//! [pool.openai-hourly]
//! limit = "5.00usd"        # or "2000000tok"; calls naming the pool are refused past it
//! window = "1h"            # the pool refills when the window rolls over
//!
//! [store]                  # share breakers, retry budgets, pacing and pools (feature `redis`)
//! redis_url = "redis://127.0.0.1:6379"   # or RETRY_RUNTIME_REDIS_URL, which overrides it
//! prefix = "resilient"     # key namespace: processes sharing state use the same prefix
//! timeout = "50ms"         # per operation; past it the call goes on with local state
//!
//! [policy.complete]        # a policy built at run time: the attribute's keys and spellings,
//! backoff = "exp_jitter"   # checked by its rules (see `Policy::builder`); use it with
//! max = 5                  # `retry(CallSite::configured("complete")?, op)`, or an HTTP layer
//! base = "200ms"
//! timeout = "20s"
//! retry_on = [429, "500..=599", "timeout"]
//! breaker = "openai"
//! ```
//!
//! Set it once at startup with [`configure`], or name a TOML file in the environment variable
//! `RETRY_RUNTIME_CONFIG` (read when the first breaker is created). Names never configured get
//! the defaults above.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::policy::{Policy, PolicyBuilder, Retryable};
use crate::spend::{Budget, Price};

pub mod store;
pub use store::StoreConfig;

/// A pacer's settings. `Default`: no known limit, adaptive, a burst of one second's worth.
///
/// ```
/// use retry_runtime::pace::PaceConfig;
///
/// let openai = PaceConfig { rpm: Some(500), tpm: Some(200_000), ..PaceConfig::default() };
/// assert!(openai.adaptive);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaceConfig {
    /// Requests per minute (`None`: no known request limit).
    pub rpm: Option<u32>,
    /// Tokens per minute (`None`: no known token limit).
    pub tpm: Option<u64>,
    /// Learn a request rate from 429s, successes and the provider's headers, on top of the
    /// known limits (or alone, when there are none). Off: only `rpm` and `tpm` pace, and
    /// `on_success`, `on_rate_limited` and `on_hint` change nothing.
    pub adaptive: bool,
    /// How much of the known limits may be spent at once after an idle spell: the buckets
    /// hold `rate × burst` (at least one request, one token). Zero: evenly spaced.
    pub burst: Duration,
    /// The longest a call waits in the pacer's line (`None`: as long as its deadline lets
    /// it). A call whose turn would come later is refused at once with
    /// [`Rejected::PacerLineFull`](crate::Rejected::PacerLineFull), and gets its fallback
    /// now rather than after the wait. Default 5 s: under a sustained overload a longer line
    /// serves no more calls (the rate is the rate), it only makes each of them later; a short
    /// one still absorbs bursts. Trades: longer keeps more calls off their fallback in a
    /// burst and makes them slower in a storm.
    pub max_wait: Option<Duration>,
}

impl Default for PaceConfig {
    fn default() -> Self {
        Self {
            rpm: None,
            tpm: None,
            adaptive: true,
            burst: Duration::from_secs(1),
            max_wait: Some(Duration::from_secs(5)),
        }
    }
}

/// The default number of answers a call site keeps for `fallback = cached`; set
/// `[fallback] cache_capacity` in the run-time configuration to change it.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

/// The environment variable naming a TOML configuration file.
pub const CONFIG_ENV: &str = "RETRY_RUNTIME_CONFIG";

/// One breaker's settings (and its retry budget's). `Default` gives the default each field
/// states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// The run of outage-class failures (with no answer between them) that opens the
    /// breaker (1..=1000). Default 30: a 70% brownout begins with a run of 5 one time in six,
    /// of 30 one time in 44 000; at 5 calls a second a hard outage opens it in 6 s. With
    /// `adaptive`, a run must be longer when failures were already common as it began (a
    /// brownout makes runs by chance), up to 10 times this:
    /// see [`regime::run_to_open`](crate::regime::run_to_open). Trades: lower opens sooner in
    /// an outage, and more often on bad luck.
    pub failures: u32,
    /// Failures further apart than this are not one run (and, with a `failure_rate`, the
    /// window they are counted in). Default 60 s.
    pub window: Duration,
    /// The share of calls, in parts per million, that must have failed for `failures` counted
    /// failures inside `window` to open the breaker: of the calls made since the oldest of
    /// those failures. 0 (the default) uses the run rule instead. Set it to keep a fixed
    /// failure-rate rule, as resilience4j has.
    pub failure_rate_ppm: u64,
    /// How long an open breaker rejects before admitting probes. Default 5 s: a probe costs
    /// one attempt, and a short cooldown lets calls through soon after an outage ends.
    pub cooldown: Duration,
    /// Probe calls admitted while half-open (1..=1000). Default 1.
    pub probes: u32,
    /// Whether a 429 counts as an outage failure. Default `false`: a 429 says "slow down".
    pub count_429: bool,
    /// Read the provider's regime and adapt to it (the default): the retry allowance moves
    /// between 0 and `retry_ratio_max` (raised in a brownout, halved in an overload), and a
    /// persisting overload or an outage-level failure share opens the breaker. Off: a fixed
    /// `retry_ratio`, and only `failures` open the breaker.
    pub adaptive: bool,
    /// Retries allowed per first attempt while healthy, in parts per million (200 000 = 20%,
    /// the default). Without `adaptive`, always.
    pub retry_ratio_ppm: u64,
    /// The most a brownout raises the retry allowance to, parts per million. Default 2 000 000
    /// (two retries per first attempt): enough for `max = 5` at 70% failures. Trades: higher
    /// answers more in a deep brownout and spends more on failed attempts.
    pub retry_ratio_max_ppm: u64,
    /// What each second of brownout adds to the allowance (and each healthy second takes
    /// back toward `retry_ratio`), parts per million. Default 200 000: from 20% to the
    /// ceiling in 9 s. Trades: faster answers a brownout sooner and, in an overload the
    /// signals have not caught yet, adds load sooner.
    pub retry_step_ppm: u64,
    /// Floor of the retry budget: retries per second always allowed. Default 1.
    pub min_retries_per_sec: u32,
    /// Most callers that may wait in this breaker's queue (`fallback = queue`) at once.
    /// Default 100.
    pub queue_len: u32,
    /// Most queued callers released per second once the breaker admits again. Default 10.
    pub queue_release_per_sec: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 30,
            window: Duration::from_secs(60),
            failure_rate_ppm: 0,
            cooldown: Duration::from_secs(5),
            probes: 1,
            count_429: false,
            adaptive: true,
            retry_ratio_ppm: 200_000,
            retry_ratio_max_ppm: 2_000_000,
            retry_step_ppm: 200_000,
            min_retries_per_sec: 1,
            queue_len: 100,
            queue_release_per_sec: 10,
        }
    }
}

/// The run-time configuration.
///
/// ```
/// use retry_runtime::config::Config;
///
/// let config = Config::from_toml_str(r#"
///     [breaker.openai]
///     failures = 3
///     cooldown = "10s"
///     retry_ratio = "10%"
/// "#).unwrap();
/// let openai = config.breaker("openai");
/// assert_eq!(openai.failures, 3);
/// assert_eq!(openai.retry_ratio_ppm, 100_000);
/// assert_eq!(config.breaker("anthropic"), Default::default());
///
/// let error = Config::from_toml_str("[breaker.openai]\nfailurez = 3\n").unwrap_err();
/// assert!(error.to_string().contains("line 2"), "{error}");
/// assert!(error.to_string().contains("failurez"), "{error}");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    breakers: BTreeMap<String, BreakerConfig>,
    pools: BTreeMap<String, PoolConfig>,
    pacers: BTreeMap<String, PaceConfig>,
    cache_capacity: Option<usize>,
    store: Option<StoreConfig>,
    pools_fail_open: bool,
    prices: BTreeMap<String, Price>,
    policies: BTreeMap<String, PolicyBuilder>,
}

/// A spend pool's settings: `[pool.NAME] limit = "5.00usd"`, `window = "1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// The most that calls naming the pool may spend in one window.
    pub limit: Budget,
    /// The window: the pool refills when it rolls over. Default one hour.
    pub window: Duration,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML is malformed, has an unknown key, or a value out of range.
    #[error("invalid retry-runtime configuration{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong, with the key and line.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read retry-runtime configuration {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `configure` was already called (or the configuration was already loaded from
    /// `RETRY_RUNTIME_CONFIG`); it is set once, never silently replaced.
    #[error("retry-runtime is already configured; configure() may be called once, before the first call")]
    AlreadyConfigured,
    /// [`CallSite::configured`](crate::CallSite::configured) was asked for a name the configuration has no
    /// `[policy.NAME]` section for.
    #[error("no policy `{name}` in the retry-runtime configuration{}", .closest.as_ref().map(|c| format!("; did you mean `{c}`?")).unwrap_or_else(|| " (it configures no policy)".to_string()))]
    UnknownPolicy {
        /// The name asked for.
        name: String,
        /// The configured name closest to it, if any policy is configured.
        closest: Option<String>,
    },
    /// Something read the configuration before `configure` ran (and took the settings in
    /// force then, the defaults unless a file was loaded).
    #[error("configure() ran after the configuration was read by: {}; call it at startup, before the first #[resilient] call", .names.join(", "))]
    TooLate {
        /// What read it first: breakers, pools and pacers by name, `[store]`, `[fallback]`.
        names: Vec<&'static str>,
    },
}

impl Config {
    /// Parse a TOML configuration. Unknown keys and out-of-range values are errors that name
    /// the key and its line.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        parse(text).map_err(|message| ConfigError::Invalid {
            path: None,
            message,
        })
    }

    /// Read and parse a TOML file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        parse(&text).map_err(|message| ConfigError::Invalid {
            path: Some(path.to_owned()),
            message,
        })
    }

    /// Set (or replace) one breaker's settings.
    pub fn with_breaker(mut self, name: &str, config: BreakerConfig) -> Self {
        self.breakers.insert(name.to_owned(), config);
        self
    }

    /// How many answers each `fallback = cached` call site keeps (default 1024).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = Some(capacity.max(1));
        self
    }

    /// Share breakers, retry budgets, pacing and pools through a store (the `[store]`
    /// section). See [`crate::store`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use retry_runtime::config::Config;
    /// use retry_runtime::store::StoreConfig;
    ///
    /// match StoreConfig::redis("redis://127.0.0.1:6379") {
    ///     Ok(store) => {
    ///         let store = store.with_prefix("billing").unwrap().with_timeout(Duration::from_millis(20));
    ///         let config = Config::default().with_store(store);
    ///         assert_eq!(config.store().unwrap().prefix(), "billing");
    ///     }
    ///     // Built without the `redis` feature: a clear error, not a silent memory store.
    ///     Err(error) => assert!(error.to_string().contains("`redis` feature"), "{error}"),
    /// }
    /// ```
    pub fn with_store(mut self, store: StoreConfig) -> Self {
        self.store = Some(store);
        self
    }

    /// The `[store]` settings, if any.
    pub fn store(&self) -> Option<&StoreConfig> {
        self.store.as_ref()
    }

    /// Set (or replace) one pacer's settings.
    pub fn with_pacer(mut self, name: &str, config: PaceConfig) -> Self {
        self.pacers.insert(name.to_owned(), config);
        self
    }

    /// The settings of the pacer `name`: configured, or the defaults (adaptive, no known limit).
    pub fn pacer(&self, name: &str) -> PaceConfig {
        self.pacers.get(name).cloned().unwrap_or_default()
    }

    /// Set (or replace) the price of a model: answers of a model whose id starts with
    /// `model` (`"gpt-4o-mini"` prices `"gpt-4o-mini-2024-07-18"`) are counted at it by the
    /// integrations' metered answers. In TOML: `[price."gpt-4o-mini"] input = "0.15usd"`,
    /// `output = "0.60usd"` (per million tokens).
    pub fn with_price(mut self, model: &str, price: Price) -> Self {
        self.prices.insert(model.to_owned(), price);
        self
    }

    /// The price of `model`: the configured model id that is its longest prefix.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.prices
            .iter()
            .filter(|(known, _)| model.starts_with(known.as_str()))
            .max_by_key(|(known, _)| known.len())
            .map(|(_, price)| *price)
    }

    /// Let a pool this configuration has no section for count spend without a limit, as
    /// when no pool is configured at all, instead of refusing its calls. Off by default: a
    /// name that is not configured while others are is most likely a typo, and a limit never
    /// fails open in silence. (`RETRY_RUNTIME_POOLS_FAIL_OPEN=1` does the same, also when a
    /// file named by `RETRY_RUNTIME_CONFIG` fails to load.)
    pub fn with_pools_fail_open(mut self, fail_open: bool) -> Self {
        self.pools_fail_open = fail_open;
        self
    }

    /// Set (or replace) one pool's settings.
    pub fn with_pool(mut self, name: &str, config: PoolConfig) -> Self {
        self.pools.insert(name.to_owned(), config);
        self
    }

    /// The settings of the pool `name`, if configured (an unconfigured pool limits nothing).
    pub fn pool(&self, name: &str) -> Option<PoolConfig> {
        self.pools.get(name).copied()
    }

    /// The settings of the breaker `name`: configured, or the defaults.
    pub fn breaker(&self, name: &str) -> BreakerConfig {
        self.breakers.get(name).cloned().unwrap_or_default()
    }

    /// Add (or replace) a policy built at run time, named by its builder's name; checked
    /// here, with the attribute's rules, so that a bad one is this call's error.
    pub fn with_policy(
        mut self,
        policy: PolicyBuilder,
    ) -> Result<Self, crate::policy::PolicyError> {
        policy.check()?;
        self.policies.insert(policy.name().to_owned(), policy);
        Ok(self)
    }

    /// The policy `name` (a `[policy.NAME]` section, or [`with_policy`](Self::with_policy)),
    /// checked and ready to [`build`](PolicyBuilder::build); for the installed configuration's
    /// policies, [`CallSite::configured`](crate::CallSite::configured) builds each one once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use retry_runtime::config::Config;
    ///
    /// let config = Config::from_toml_str(r#"
    ///     [policy.complete]
    ///     backoff = "exp_jitter"
    ///     max = 5
    ///     base = "200ms"
    ///     timeout = "20s"
    ///     retry_on = [429, "500..=599", "timeout"]
    ///     breaker = "openai"
    /// "#).unwrap();
    /// let site = config.policy("complete").unwrap().clone().build().unwrap();
    /// assert_eq!(site.policy().max_attempts(), 5);
    /// assert_eq!(site.policy().timeout(), Some(Duration::from_secs(20)));
    ///
    /// // The attribute's rules, in its words, with the key's line:
    /// let error = Config::from_toml_str("[policy.complete]\nmax = 0\nretry_on = [400]\n").unwrap_err();
    /// let error = error.to_string();
    /// assert!(error.contains("max (line 2): `max = 0` would never call the function"), "{error}");
    /// assert!(error.contains("retry_on (line 3): `400` is Bad Request"), "{error}");
    ///
    /// // From code, checked as it is added:
    /// use retry_runtime::Policy;
    /// let config = Config::default().with_policy(Policy::builder("summarize").max_attempts(4)).unwrap();
    /// assert_eq!(config.policy_names().collect::<Vec<_>>(), ["summarize"]);
    /// assert!(Config::default().with_policy(Policy::builder("bad").max_attempts(0)).is_err());
    /// ```
    pub fn policy(&self, name: &str) -> Option<&PolicyBuilder> {
        self.policies.get(name)
    }

    /// The names of the configured policies.
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.keys().map(String::as_str)
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();
// What read the configuration, in the order it first did: breakers, pools and pacers by name,
// the store and the fallback cache by section. Written on each one's first read only (a cold
// path: call sites resolve their breaker, pool and pacer once), so a lock is fine.
static READERS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
// The file named by RETRY_RUNTIME_CONFIG that could not be loaded, and why: pools then refuse
// (a limit never fails open in silence) until the process runs with a file that loads.
static LOAD_ERROR: OnceLock<String> = OnceLock::new();

/// The environment variable that lets pools count without a limit when their configuration
/// is missing (`RETRY_RUNTIME_POOLS_FAIL_OPEN=1`): a file that failed to load, or a pool name
/// the file has no section for. Off by default: such pools refuse their calls.
pub const POOLS_FAIL_OPEN_ENV: &str = "RETRY_RUNTIME_POOLS_FAIL_OPEN";

/// Install the process-wide configuration. Call once, at startup, before the first
/// `#[resilient]` call that uses a breaker, pool, pacer, store or cache.
///
/// A second call is an error, not a silent overwrite; so is a call after anything already read
/// the configuration (a breaker, pool or pacer created on first use, the store, a fallback
/// cache): the error names what did, since that first use is the mistake to fix.
pub fn configure(config: Config) -> Result<(), ConfigError> {
    let readers = lock(&READERS).clone();
    if !readers.is_empty() {
        return Err(ConfigError::TooLate { names: readers });
    }
    // A bad RETRY_RUNTIME_REDIS_URL is this call's error, not a silent fallback later.
    store::env_url()?;
    CONFIG
        .set(config)
        .map_err(|_| ConfigError::AlreadyConfigured)
}

/// Load the file named by `RETRY_RUNTIME_CONFIG`, if set, and install it.
///
/// Call it at startup to see a bad file's error; otherwise the first breaker loads it, and a
/// bad file is reported as an ERROR event (target `retry_runtime`) and the defaults are used.
pub fn configure_from_env() -> Result<(), ConfigError> {
    match std::env::var_os(CONFIG_ENV) {
        Some(path) => configure(Config::from_path(PathBuf::from(path))?),
        None => Ok(()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The configuration, read by `reader`: from now on `configure` refuses, naming it.
fn read(reader: &'static str) -> &'static Config {
    {
        let mut readers = lock(&READERS);
        if !readers.contains(&reader) {
            readers.push(reader);
        }
    }
    CONFIG.get_or_init(|| match std::env::var_os(CONFIG_ENV) {
        None => Config::default(),
        Some(path) => Config::from_path(PathBuf::from(&path)).unwrap_or_else(|error| {
            tracing::error!(target: "retry_runtime", %error, "ignoring {CONFIG_ENV}: breakers and pacers use their defaults, and pools refuse calls until it loads (unless {POOLS_FAIL_OPEN_ENV}=1)");
            let _ = LOAD_ERROR.set(format!("{}: {error}", PathBuf::from(&path).display()));
            Config::default()
        }),
    })
}

/// The policy `name` of the process-wide configuration, read by
/// [`CallSite::configured`](crate::CallSite::configured): a name it lacks is an error naming
/// the closest one it has.
pub(crate) fn policy_config(name: &str) -> Result<PolicyBuilder, ConfigError> {
    let config = read("[policy]");
    match config.policy(name) {
        Some(policy) => Ok(policy.clone()),
        None => Err(ConfigError::UnknownPolicy {
            name: name.to_owned(),
            closest: config
                .policies
                .keys()
                .map(|known| (strsim::damerau_levenshtein(name, known), known))
                .min()
                .map(|(_, known)| known.clone()),
        }),
    }
}

/// The settings of the breaker `name`, read by that breaker.
pub(crate) fn breaker_config(name: &'static str) -> BreakerConfig {
    read(name).breaker(name)
}

/// What the configuration says about one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoolSetting {
    /// Its `[pool.NAME]` section.
    Limited(PoolConfig),
    /// No pool is configured at all: it counts spend and limits nothing (and says so).
    Unlimited,
    /// Its configuration is missing where it should be (the file failed to load, or it has
    /// pool sections but none of this name): refuse, and say why.
    Refused {
        /// The ERROR event's text.
        why: String,
    },
}

/// The settings of the pool `name`, read by that pool.
pub(crate) fn pool_config(name: &'static str) -> PoolSetting {
    let config = read(name);
    let fail_open = config.pools_fail_open
        || std::env::var(POOLS_FAIL_OPEN_ENV).is_ok_and(|v| matches!(v.trim(), "1" | "true"));
    pool_setting(
        config,
        LOAD_ERROR.get().map(String::as_str),
        fail_open,
        name,
    )
}

/// [`pool_config`] as a pure function of the configuration, the load error and the opt-out.
pub(crate) fn pool_setting(
    config: &Config,
    load_error: Option<&str>,
    fail_open: bool,
    name: &str,
) -> PoolSetting {
    if let Some(pool) = config.pool(name) {
        return PoolSetting::Limited(pool);
    }
    let why = match load_error {
        Some(error) => format!(
            "pool `{name}` has no limit because the configuration file did not load ({error})"
        ),
        None if config.pools.is_empty() => return PoolSetting::Unlimited,
        None => {
            let closest = config
                .pools
                .keys()
                .map(|known| (strsim::damerau_levenshtein(name, known), known))
                .min()
                .map(|(_, known)| known.as_str())
                .unwrap_or_default();
            format!(
                "pool `{name}` is not in the configuration, which configures other pools; did you mean `{closest}`?"
            )
        }
    };
    if fail_open {
        PoolSetting::Unlimited
    } else {
        PoolSetting::Refused { why }
    }
}

/// The settings of the pacer `name`, read by that pacer.
pub(crate) fn pace_config(name: &'static str) -> PaceConfig {
    read(name).pacer(name)
}

/// A pacer registered with settings of its own: a `[pace.NAME]` section installed later
/// would be ignored for it, so it counts as a read.
pub(crate) fn fixed_by(name: &'static str) {
    let _ = read(name);
}

/// The `[store]` settings, read by the store.
pub(crate) fn store_config() -> Option<StoreConfig> {
    read("[store]").store.clone()
}

/// The price of `model` in the process-wide configuration (see [`Config::with_price`]).
pub fn price(model: &str) -> Option<Price> {
    // Said to the readers once: a metered answer asks for every answer, and `read` locks.
    static READ: std::sync::OnceLock<&'static Config> = std::sync::OnceLock::new();
    READ.get_or_init(|| read("[price]")).price(model)
}

/// The fallback cache's capacity, read by the first cache.
pub(crate) fn cache_capacity() -> usize {
    read("[fallback]")
        .cache_capacity
        .unwrap_or(DEFAULT_CACHE_CAPACITY)
}

mod toml_file;
use self::toml_file::parse;
pub use self::toml_file::parse_duration;
/// Names as the attribute accepts them: `[a-z0-9_-]{1,64}` (one rule, in `retry-grammar`).
pub use retry_grammar::valid_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pool_refuses_unless_no_pool_is_configured_or_it_may_fail_open() {
        let limit = PoolConfig {
            limit: Budget::usd(1.0),
            window: Duration::from_secs(3600),
        };
        let none = Config::default();
        let some = Config::default().with_pool("openai_hourly", limit);
        assert_eq!(
            pool_setting(&some, None, false, "openai_hourly"),
            PoolSetting::Limited(limit)
        );
        assert_eq!(
            pool_setting(&none, None, false, "x"),
            PoolSetting::Unlimited
        );
        match pool_setting(&some, None, false, "openai-hourly") {
            PoolSetting::Refused { why } => {
                assert!(why.contains("did you mean `openai_hourly`"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pool_setting(&some, None, true, "openai-hourly"),
            PoolSetting::Unlimited
        );
        match pool_setting(&none, Some("line 2: bad unit"), false, "x") {
            PoolSetting::Refused { why } => assert!(why.contains("bad unit"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pool_setting(&none, Some("bad"), true, "x"),
            PoolSetting::Unlimited
        );
    }

    #[test]
    fn full_section() {
        let c = Config::from_toml_str(
            r#"
            [breaker.openai]
            failures = 3
            window = "10s"
            cooldown = "1m"
            probes = 2
            count_429 = true
            retry_ratio = 0.1
            min_retries_per_sec = 0
            failure_rate = "25%"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.breaker("openai"),
            BreakerConfig {
                failures: 3,
                window: Duration::from_secs(10),
                cooldown: Duration::from_secs(60),
                probes: 2,
                count_429: true,
                retry_ratio_ppm: 100_000,
                min_retries_per_sec: 0,
                failure_rate_ppm: 250_000,
                ..BreakerConfig::default()
            }
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        for (text, wants) in [
            ("[breaker.a]\nfailures = 0\n", "line 2"),
            ("[breaker.a]\n\nwindow = \"5 parsecs\"\n", "line 3"),
            ("[breaker.a]\ncooldown = \"0s\"\n", "longer than zero"),
            ("[breaker.a]\nretry_ratio = -1.0\n", "out of range"),
            ("[breaker.a]\nretry_ratio = \"lots\"\n", "not a ratio"),
            ("[breaker.a]\nfailure_rate = 1.5\n", "share of the calls"),
            (
                "[breaker.a]\nfailure_rate = \"150%\"\n",
                "share of the calls",
            ),
            ("[breakers.a]\nfailures = 1\n", "breakers"),
            ("[breaker.a]\nprobes = \"2\"\n", "line 2"),
            ("[breaker.\"Open AI\"]\n", "Open AI"),
            ("[pool.p]\nlimit = \"5eur\"\n", "line 2"),
            ("[pool.p]\nwindow = \"1h\"\n", "limit"),
            ("[pool.p]\nlimit = \"1usd\"\nsize = 3\n", "size"),
            ("[breaker.a\n", "line 1"),
        ] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(wants), "{text:?}: {e}");
        }
    }

    #[test]
    fn pace_section() {
        let c = Config::from_toml_str(
            "[pace.openai]\nrpm = 500\ntpm = 200000\nadaptive = false\nburst = \"2s\"\n",
        )
        .unwrap();
        let p = c.pacer("openai");
        assert_eq!(p.rpm, Some(500));
        assert_eq!(p.tpm, Some(200_000));
        assert!(!p.adaptive);
        assert_eq!(p.burst, Duration::from_secs(2));
        assert_eq!(c.pacer("other"), PaceConfig::default());
        // Large accounts' limits are in the tens of thousands per minute.
        let big = Config::from_toml_str("[pace.openai]\nrpm = 30000\n").unwrap();
        assert_eq!(big.pacer("openai").rpm, Some(30_000));
        let e = Config::from_toml_str("[pace.openai]\nrpm = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::from_toml_str("[pace.openai]\nrps = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rps"), "{e}");
    }

    #[test]
    fn store_section() {
        let bad = [
            ("[store]\nredis_url = \"http://h:1\"\n", "line 2"),
            ("[store]\nredis_url = \"rediss://h:1\"\n", "TLS"),
            ("[store]\n\nprefix = \"a b\"\n", "line 3"),
            ("[store]\ntimeout = \"50 parsecs\"\n", "line 2"),
            ("[store]\ntimeout = \"0ms\"\n", "longer than zero"),
            ("[store]\nredis = \"redis://h:1\"\n", "redis"),
        ];
        for (text, wants) in bad {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(wants), "{text:?}: {e}");
        }
        // Without a URL the section only sets the namespace and timeouts (the URL may come
        // from RETRY_RUNTIME_REDIS_URL).
        let c =
            Config::from_toml_str("[store]\nprefix = \"billing\"\ntimeout = \"20ms\"\n").unwrap();
        let store = c.store().unwrap();
        assert_eq!(store.redis_url(), None);
        assert_eq!(store.prefix(), "billing");
        assert_eq!(store.timeout(), Duration::from_millis(20));
        assert_eq!(Config::default().store(), None);
        let with_url = Config::from_toml_str(
            "[store]\nredis_url = \"redis://127.0.0.1:6390\"\nreconnect = \"1s\"\n",
        );
        #[cfg(feature = "redis")]
        {
            let c = with_url.unwrap();
            let store = c.store().unwrap();
            assert_eq!(store.redis_url(), Some("redis://127.0.0.1:6390"));
            assert_eq!(store.prefix(), store::DEFAULT_PREFIX);
            assert_eq!(store.timeout(), store::DEFAULT_TIMEOUT);
            assert_eq!(store.reconnect_every(), Duration::from_secs(1));
        }
        #[cfg(not(feature = "redis"))]
        assert!(with_url
            .unwrap_err()
            .to_string()
            .contains("`redis` feature"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("10").is_err());
    }
}
