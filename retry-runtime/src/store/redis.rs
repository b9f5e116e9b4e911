//! [`RedisStore`]: shared state in one Redis server (feature `redis`).
//!
//! Keys, under the configured prefix `P` wrapped as a hash tag (`{P}`, so a script's keys
//! would sit in one slot):
//!
//! | key | type | what | expiry |
//! |---|---|---|---|
//! | `{P}:breaker:NAME` | hash `until`, `gen` | open until (ms, Redis time); generation | cooldown + max(cooldown, 60 s) |
//! | `{P}:retry:NAME:SECOND` | hash `d`, `r` | first attempts, retries in that second | 11 s |
//! | `{P}:pool:NAME:WINDOW` | integer | committed in window `WINDOW` = ms / window | two windows |
//! | `{P}:pace:NAME` | integer | GCRA theoretical arrival time (µs, Redis time) | 1 s after it passes |
//! | `{P}:probes:NAME` | sorted set | half-open probe leases: token, scored by expiry (ms) | when its last lease lapses |
//!
//! Six Lua scripts, each one round trip (`EVALSHA`, loaded on connect): `admit` (breaker
//! check and probe lease, retry budget, pacer slot, pool reservation: all checks, then all
//! writes), `settle` (also used to add reconciled spend), `release`, `breaker_open` (which
//! also ends the probe leases), `probe_renew`, `probe_end` (a leased probe's result, applied
//! only if its lease is still there); a closed breaker is one `DEL` of its state and its
//! leases, a released lease a `ZREM`.
//! Every time comes from `redis.call('TIME')`, never from a process's clock.
//!
//! Connections: one opened by [`Store::ping`] (on the store's thread, when the runtime uses
//! the store) for the writes, pings and reconciliation, and one per tokio runtime that
//! admits through [`Store::admit_here`], opened in the background on that runtime the first
//! time it asks. A caller's admission then writes and reads on its own runtime's reactor, with
//! no thread between it and Redis; concurrent admissions share the connection, pipelined.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, RedisError, Script,
    ServerErrorKind,
};
use tokio::runtime::{Handle, Id};
use tokio::task::AbortHandle;

use super::{
    Admit, Admitted, SharedBreaker, Store, StoreConfig, StoreError, StoreFuture, Update, Verdict,
};
use crate::retry_budget::WINDOW_SECS;

#[doc(hidden)]
/// The admission script. ARGV: prefix, breaker, deposit, withdraw, ratio_ppm,
/// floor_per_window, pool, window_ms, limit, expected, pacer, interval_us, burst, max_wait_us,
/// probe_token, probes, lease_ms.
/// Returns {verdict, breaker_found, generation, open_ms, committed, window, wait_us, leased}.
/// `WINDOW_SECS` in the text is a placeholder: replace it by the retry budget's window
/// ([`WINDOW_SECS`]) before loading the script.
pub const ADMIT_LUA: &str = include_str!("scripts/admit.lua");

#[doc(hidden)]
/// The settle script. ARGV: prefix, pool, window_ms, window (-1: none), reserved, real.
/// In the reservation's window: add real - reserved; after it rolled over: add real to the
/// current one.
pub const SETTLE_LUA: &str = include_str!("scripts/settle.lua");

#[doc(hidden)]
/// The release script. ARGV: prefix, pool, window, reserved. Never creates a key.
pub const RELEASE_LUA: &str = include_str!("scripts/release.lua");

#[doc(hidden)]
/// The breaker-open script. ARGV: prefix, breaker, cooldown_ms, force. Without `force`, a
/// stored open state that still runs is kept. The generation becomes max(now µs, old + 1),
/// so it never repeats, even after the key expired.
pub const BREAKER_OPEN_LUA: &str = include_str!("scripts/breaker_open.lua");

#[doc(hidden)]
/// The probe-renewal script. ARGV: prefix, breaker, token, lease_ms. A lease still held holds
/// `lease_ms` from now; one that lapsed (or whose period ended) is not taken again.
pub const PROBE_RENEW_LUA: &str = include_str!("scripts/probe_renew.lua");

#[doc(hidden)]
/// The probe-result script. ARGV: prefix, breaker, token, cooldown_ms ('': close). Applied
/// only while the token's lease is in the store (the period it was leased in goes on).
pub const PROBE_END_LUA: &str = include_str!("scripts/probe_end.lua");

struct Scripts {
    admit: Script,
    settle: Script,
    release: Script,
    breaker_open: Script,
    probe_renew: Script,
    probe_end: Script,
}

/// The connection `ping` opened, and the runtime its I/O runs on.
struct Home {
    connection: MultiplexedConnection,
    runtime: Option<Id>,
}

/// The connections of the runtimes that admit through [`Store::admit_here`].
#[derive(Default)]
struct Callers {
    /// The home connection's runtime: it needs no second connection.
    home: Option<Id>,
    list: Vec<CallerConnection>,
}

/// One runtime's connection, opened (and kept) by a task on that runtime.
struct CallerConnection {
    runtime: Id,
    /// Held by the task: it is gone when the runtime shut down (the task with it).
    slot: Weak<Slot>,
    task: AbortHandle,
    since: Instant,
}

#[derive(Default)]
struct Slot {
    connection: OnceLock<MultiplexedConnection>,
}

/// Shared state in Redis. See the module docs for the keys, scripts and connections.
pub struct RedisStore {
    client: Client,
    prefix: String,
    connect_timeout: Duration,
    /// How long a runtime's connection may take to open before it is tried again.
    caller_retry: Duration,
    connection: Mutex<Option<Home>>,
    callers: Mutex<Callers>,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("connected", &self.connection().is_some())
            .finish()
    }
}

fn backend(error: RedisError) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn bool_arg(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change below is complete between statements: a poisoned lock is still valid.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `error` means the connection is no good any more (a fresh one is needed).
fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

/// `EVALSHA` of `script`'s hash with no keys (the scripts compute theirs): the arguments are
/// added by the caller, into the command's one buffer.
fn evalsha(script: &Script) -> Cmd {
    let mut cmd = Cmd::with_capacity(18, 160);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(0);
    cmd
}

/// Run `cmd` (an `EVALSHA` of `script`); a server that lost the script (a `SCRIPT FLUSH`, a
/// restart) gets it again, once.
async fn eval<T: FromRedisValue>(
    connection: &mut MultiplexedConnection,
    script: &Script,
    cmd: &Cmd,
) -> Result<T, RedisError> {
    match cmd.query_async(connection).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(connection).await?;
            cmd.query_async(connection).await
        }
        answer => answer,
    }
}

impl RedisStore {
    /// A store for the server at `url`, under `config`'s prefix. Does not connect: the
    /// first [`Store::ping`] does (in the background, when used by the runtime).
    pub fn new(url: &str, config: &StoreConfig) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(backend)?;
        let window = WINDOW_SECS.to_string();
        let connect_timeout = config.timeout().max(Duration::from_millis(250));
        Ok(Self {
            client,
            prefix: format!("{{{}}}", config.prefix()),
            connect_timeout,
            caller_retry: connect_timeout.max(config.reconnect_every()),
            connection: Mutex::new(None),
            callers: Mutex::new(Callers::default()),
            scripts: Scripts {
                admit: Script::new(&ADMIT_LUA.replace("WINDOW_SECS", &window)),
                settle: Script::new(SETTLE_LUA),
                release: Script::new(RELEASE_LUA),
                breaker_open: Script::new(BREAKER_OPEN_LUA),
                probe_renew: Script::new(PROBE_RENEW_LUA),
                probe_end: Script::new(PROBE_END_LUA),
            },
        })
    }

    /// The key prefix, with its hash-tag braces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        lock(&self.connection)
            .as_ref()
            .map(|h| h.connection.clone())
    }

    fn set_connection(&self, home: Option<Home>) {
        lock(&self.callers).home = home.as_ref().and_then(|h| h.runtime);
        *lock(&self.connection) = home;
    }

    /// The connection of the caller's runtime, when it is open; otherwise `None`, after
    /// starting to open it (in the background, on that runtime) if nothing is under way.
    fn caller_connection(&self) -> Option<(MultiplexedConnection, Id)> {
        let runtime = Handle::try_current().ok()?;
        let id = runtime.id();
        let mut callers = lock(&self.callers);
        if callers.home == Some(id) {
            return None;
        }
        if let Some(i) = callers.list.iter().position(|c| c.runtime == id) {
            let caller = &callers.list[i];
            if let Some(slot) = caller.slot.upgrade() {
                if let Some(connection) = slot.connection.get() {
                    return Some((connection.clone(), id));
                }
                if caller.since.elapsed() < self.caller_retry {
                    return None;
                }
            }
            // The runtime is gone, or its connection did not open in time: start again.
            callers.list.swap_remove(i).task.abort();
        }
        // Forget the runtimes that shut down (their tasks went with them).
        callers.list.retain(|c| c.slot.strong_count() > 0);
        let caller = self.open_caller(&runtime, id);
        callers.list.push(caller);
        None
    }

    /// Open a connection on `runtime`, in a task there that keeps it until the runtime shuts
    /// down or the store lets it go.
    fn open_caller(&self, runtime: &Handle, id: Id) -> CallerConnection {
        let slot = Arc::new(Slot::default());
        let weak = Arc::downgrade(&slot);
        let client = self.client.clone();
        let task = runtime.spawn(async move {
            // No timeouts on the caller's runtime: its clock may be paused, or it may have no
            // timers. The runtime bounds each admission in real time; a connection that does
            // not open is tried again after a while (`caller_connection`).
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(None);
            if let Ok(connection) = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                let _ = slot.connection.set(connection);
            }
            std::future::pending::<()>().await;
            drop(slot);
        });
        CallerConnection {
            runtime: id,
            slot: weak,
            task: task.abort_handle(),
            since: Instant::now(),
        }
    }

    /// Let go of one runtime's connection (`Some`), or of every one (`None`).
    fn drop_callers(&self, runtime: Option<Id>) {
        let mut callers = lock(&self.callers);
        callers.list.retain(|c| {
            let keep = runtime.is_some_and(|id| id != c.runtime);
            if !keep {
                c.task.abort();
            }
            keep
        });
    }

    /// A failed operation on the home connection (`None`) or a runtime's: a broken
    /// connection is dropped, so that the next one is fresh.
    fn failed(&self, error: RedisError, caller: Option<Id>) -> StoreError {
        if breaks_connection(&error) {
            match caller {
                Some(id) => self.drop_callers(Some(id)),
                None => self.set_connection(None),
            }
        }
        backend(error)
    }

    async fn connect(&self) -> Result<(), StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(backend)?;
        // Loaded now, so that no admission pays for a NOSCRIPT round trip.
        for script in [
            &self.scripts.admit,
            &self.scripts.settle,
            &self.scripts.release,
            &self.scripts.breaker_open,
            &self.scripts.probe_renew,
            &self.scripts.probe_end,
        ] {
            script
                .prepare_invoke()
                .load_async(&mut connection)
                .await
                .map_err(backend)?;
        }
        let runtime = Handle::try_current().ok().map(|h| h.id());
        self.set_connection(Some(Home {
            connection,
            runtime,
        }));
        Ok(())
    }

    fn admit_cmd(&self, ask: &Admit) -> Cmd {
        let mut cmd = evalsha(&self.scripts.admit);
        cmd.arg(&self.prefix);
        match &ask.breaker {
            Some(b) => {
                let rule = b.withdraw.unwrap_or(super::RetryRule {
                    ratio_ppm: 0,
                    floor_per_window: 0,
                });
                cmd.arg(b.name)
                    .arg(bool_arg(b.deposit))
                    .arg(bool_arg(b.withdraw.is_some()))
                    .arg(rule.ratio_ppm)
                    .arg(rule.floor_per_window);
            }
            None => {
                cmd.arg("").arg("0").arg("0").arg(0).arg(0);
            }
        }
        match &ask.pool {
            Some(p) => {
                cmd.arg(p.name)
                    .arg(p.window_ms.max(1))
                    .arg(p.limit)
                    .arg(p.expected);
            }
            None => {
                cmd.arg("").arg(1).arg(0).arg(0);
            }
        }
        match &ask.pace {
            Some(p) => {
                cmd.arg(p.name)
                    .arg(p.interval_us.max(1))
                    .arg(p.burst.max(1))
                    .arg(p.max_wait_us.min(1 << 52));
            }
            None => {
                cmd.arg("").arg(1).arg(1).arg(0);
            }
        }
        match (&ask.breaker, &ask.probe) {
            (Some(_), Some(p)) => {
                cmd.arg(p.token).arg(p.probes.max(1)).arg(p.lease_ms.max(1));
            }
            _ => {
                cmd.arg("").arg(1).arg(1);
            }
        }
        cmd
    }

    /// One admission on `connection` (the home one: `caller` is `None`).
    async fn admit_on(
        &self,
        mut connection: MultiplexedConnection,
        caller: Option<Id>,
        ask: Admit,
    ) -> Result<Admitted, StoreError> {
        let cmd = self.admit_cmd(&ask);
        match eval::<Vec<i64>>(&mut connection, &self.scripts.admit, &cmd).await {
            Ok(answer) => parse_admitted(&ask, &answer),
            Err(error) => Err(self.failed(error, caller)),
        }
    }

    async fn admit_inner(&self, ask: Admit) -> Result<Admitted, StoreError> {
        let connection = self.connection().ok_or(StoreError::NotConnected)?;
        self.admit_on(connection, None, ask).await
    }

    async fn update_inner(&self, update: Update) -> Result<(), StoreError> {
        let mut connection = self.connection().ok_or(StoreError::NotConnected)?;
        let prefix = &self.prefix;
        let (script, cmd) = match update {
            Update::Settle {
                pool,
                window_ms,
                window,
                reserved,
                real,
            } => {
                let mut cmd = evalsha(&self.scripts.settle);
                cmd.arg(prefix)
                    .arg(pool)
                    .arg(window_ms.max(1))
                    .arg(window)
                    .arg(reserved)
                    .arg(real);
                (&self.scripts.settle, cmd)
            }
            Update::AddSpend {
                pool,
                window_ms,
                amount,
            } => {
                let mut cmd = evalsha(&self.scripts.settle);
                cmd.arg(prefix)
                    .arg(pool)
                    .arg(window_ms.max(1))
                    .arg(-1)
                    .arg(0)
                    .arg(amount);
                (&self.scripts.settle, cmd)
            }
            Update::Release {
                pool,
                window,
                reserved,
            } => {
                let mut cmd = evalsha(&self.scripts.release);
                cmd.arg(prefix).arg(pool).arg(window).arg(reserved);
                (&self.scripts.release, cmd)
            }
            Update::BreakerOpened {
                breaker,
                cooldown,
                force,
            } => {
                let mut cmd = evalsha(&self.scripts.breaker_open);
                cmd.arg(prefix)
                    .arg(breaker)
                    .arg(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX))
                    .arg(bool_arg(force));
                (&self.scripts.breaker_open, cmd)
            }
            Update::BreakerClosed { breaker } => {
                let mut cmd = ::redis::cmd("DEL");
                cmd.arg(format!("{prefix}:breaker:{breaker}"))
                    .arg(format!("{prefix}:probes:{breaker}"));
                let answer = cmd.query_async::<()>(&mut connection).await;
                return answer.map_err(|e| self.failed(e, None));
            }
            Update::ProbeRenewed {
                breaker,
                token,
                lease,
            } => {
                let mut cmd = evalsha(&self.scripts.probe_renew);
                cmd.arg(prefix)
                    .arg(breaker)
                    .arg(token)
                    .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1));
                (&self.scripts.probe_renew, cmd)
            }
            Update::ProbeEnded {
                breaker,
                token,
                reopen,
            } => {
                let mut cmd = evalsha(&self.scripts.probe_end);
                cmd.arg(prefix).arg(breaker).arg(token);
                match reopen {
                    Some(cooldown) => {
                        cmd.arg(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX));
                    }
                    None => {
                        cmd.arg("");
                    }
                }
                (&self.scripts.probe_end, cmd)
            }
            Update::ProbeReleased { breaker, token } => {
                let mut cmd = ::redis::cmd("ZREM");
                cmd.arg(format!("{prefix}:probes:{breaker}")).arg(token);
                let answer = cmd.query_async::<()>(&mut connection).await;
                return answer.map_err(|e| self.failed(e, None));
            }
        };
        eval::<::redis::Value>(&mut connection, script, &cmd)
            .await
            .map(|_| ())
            .map_err(|e| self.failed(e, None))
    }

    async fn ping_inner(&self) -> Result<(), StoreError> {
        // Pinged to reconnect (after an outage, or at the start): the runtimes' connections
        // are opened afresh, after this one.
        self.drop_callers(None);
        if let Some(mut connection) = self.connection() {
            let ping = ::redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await;
            if ping.is_ok() {
                return Ok(());
            }
            // Whatever went wrong, a fresh connection is the way back.
            self.set_connection(None);
        }
        self.connect().await?;
        let mut connection = self.connection().ok_or(StoreError::NotConnected)?;
        ::redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.failed(e, None))
    }
}

/// Read the admission script's answer.
pub(crate) fn parse_admitted(ask: &Admit, answer: &[i64]) -> Result<Admitted, StoreError> {
    let [verdict, found, generation, open_ms, committed, window, wait_us, leased] = *answer else {
        return Err(StoreError::Protocol(format!(
            "admit returned {} values, expected 8",
            answer.len()
        )));
    };
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let verdict = match verdict {
        0 => Verdict::Admitted,
        1 => Verdict::BreakerOpen,
        2 => Verdict::RetryBudget,
        3 => Verdict::PoolFull,
        4 => Verdict::PaceTooLate,
        5 => Verdict::ProbesOut,
        other => return Err(StoreError::Protocol(format!("unknown verdict {other}"))),
    };
    Ok(Admitted {
        verdict,
        breaker: ask.breaker.as_ref().map(|_| SharedBreaker {
            generation: u(generation),
            open_for: (found == 1).then(|| Duration::from_millis(u(open_ms))),
        }),
        pool: ask.pool.as_ref().map(|_| (u(window), u(committed))),
        pace_wait: Duration::from_micros(u(wait_us)),
        leased: leased == 1,
    })
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn admit(&self, ask: Admit) -> StoreFuture<'_, Admitted> {
        Box::pin(self.admit_inner(ask))
    }

    /// On the caller's runtime's own connection, once it is open (the first ask of a runtime
    /// starts opening it and goes to the store's thread).
    #[allow(clippy::result_large_err)] // as the trait's
    fn admit_here(&self, ask: Admit) -> Result<StoreFuture<'_, Admitted>, Admit> {
        match self.caller_connection() {
            Some((connection, id)) => Ok(Box::pin(self.admit_on(connection, Some(id), ask))),
            None => Err(ask),
        }
    }

    fn update(&self, update: Update) -> StoreFuture<'_, ()> {
        Box::pin(self.update_inner(update))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ping_inner())
    }
}

#[cfg(test)]
mod tests {
    //! The scripts against a real `redis-server` (skipped, with a message, where none is
    //! installed, unless `RESILIENT_REQUIRE_REDIS=1`).
    use super::*;
    use crate::store::{BreakerAsk, PaceAsk, PoolAsk, RetryRule};
    use std::process::{Child, Command, Stdio};

    struct Server {
        child: Child,
        port: u16,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn server() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if std::env::var("RESILIENT_REQUIRE_REDIS").as_deref() != Ok("1") => {
                eprintln!("SKIPPED: cannot start redis-server ({e}); set RESILIENT_REQUIRE_REDIS=1 to fail instead");
                return None;
            }
            Err(e) => panic!("redis-server is required: {e}"),
        };
        let server = Server { child, port };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on {port}");
    }

    async fn store(server: &Server, prefix: &str) -> RedisStore {
        let url = format!("redis://127.0.0.1:{}", server.port);
        let config = StoreConfig::redis(&url)
            .unwrap()
            .with_prefix(prefix)
            .unwrap();
        let store = RedisStore::new(&url, &config).unwrap();
        store.ping().await.unwrap();
        store
    }

    fn pool_ask(expected: u64) -> Admit {
        Admit {
            pool: Some(PoolAsk {
                name: "p",
                window_ms: 3_600_000,
                limit: 100,
                expected,
            }),
            ..Admit::default()
        }
    }

    #[tokio::test]
    async fn pool_reserve_settle_release_and_reconcile() {
        let Some(server) = server() else { return };
        let s = store(&server, "t-pool").await;
        let a = s.admit(pool_ask(60)).await.unwrap();
        assert_eq!(a.verdict, Verdict::Admitted);
        let (window, committed) = a.pool.unwrap();
        assert_eq!(committed, 60);
        let refused = s.admit(pool_ask(60)).await.unwrap();
        assert_eq!(refused.verdict, Verdict::PoolFull);
        assert_eq!(refused.pool, Some((window, 60)), "a refusal takes nothing");
        let settle = Update::Settle {
            pool: "p",
            window_ms: 3_600_000,
            window,
            reserved: 60,
            real: 30,
        };
        s.update(settle).await.unwrap();
        let b = s.admit(pool_ask(60)).await.unwrap();
        assert_eq!(b.pool, Some((window, 90)));
        s.update(Update::Release {
            pool: "p",
            window,
            reserved: 60,
        })
        .await
        .unwrap();
        s.update(Update::AddSpend {
            pool: "p",
            window_ms: 3_600_000,
            amount: 70,
        })
        .await
        .unwrap();
        // 30 settled + 70 reconciled: the limit is reached, even a zero estimate is refused.
        let full = s.admit(pool_ask(0)).await.unwrap();
        assert_eq!(
            (full.verdict, full.pool),
            (Verdict::PoolFull, Some((window, 100)))
        );
        // Releasing a reservation in a window that is gone creates nothing.
        s.update(Update::Release {
            pool: "p",
            window: window + 7,
            reserved: 5,
        })
        .await
        .unwrap();
        let mut c = s.connection().unwrap();
        let key = format!("{{t-pool}}:pool:p:{window}");
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            ttl > 3_600_000 && ttl <= 7_200_000,
            "expires after two windows: {ttl}"
        );
        let gone: i64 = ::redis::cmd("EXISTS")
            .arg(format!("{{t-pool}}:pool:p:{}", window + 7))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(gone, 0);
        // Another prefix is another fleet.
        let other = store(&server, "t-pool-other").await;
        let fresh = other.admit(pool_ask(60)).await.unwrap();
        assert_eq!(fresh.pool, Some((window, 60)));
    }

    fn breaker_ask(deposit: bool, withdraw: Option<RetryRule>) -> Admit {
        Admit {
            breaker: Some(BreakerAsk {
                name: "b",
                deposit,
                withdraw,
            }),
            ..Admit::default()
        }
    }

    #[tokio::test]
    async fn breaker_open_is_seen_and_closing_clears_it() {
        let Some(server) = server() else { return };
        let s = store(&server, "t-breaker").await;
        let closed = s.admit(breaker_ask(false, None)).await.unwrap();
        assert_eq!(closed.verdict, Verdict::Admitted);
        assert_eq!(
            closed.breaker,
            Some(SharedBreaker {
                generation: 0,
                open_for: None
            })
        );
        let open = |force| Update::BreakerOpened {
            breaker: "b",
            cooldown: Duration::from_secs(30),
            force,
        };
        s.update(open(false)).await.unwrap();
        let a = s.admit(breaker_ask(false, None)).await.unwrap();
        assert_eq!(a.verdict, Verdict::BreakerOpen);
        let seen = a.breaker.unwrap();
        assert!(seen.generation > 0);
        let left = seen.open_for.unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        // Without force, a running open state is kept (same generation).
        s.update(open(false)).await.unwrap();
        let b = s.admit(breaker_ask(false, None)).await.unwrap();
        assert_eq!(b.breaker.unwrap().generation, seen.generation);
        // A failed probe (force) starts a new one.
        s.update(open(true)).await.unwrap();
        let c = s.admit(breaker_ask(false, None)).await.unwrap();
        assert!(c.breaker.unwrap().generation > seen.generation);
        s.update(Update::BreakerClosed { breaker: "b" })
            .await
            .unwrap();
        let d = s.admit(breaker_ask(false, None)).await.unwrap();
        assert_eq!(d.verdict, Verdict::Admitted);
        assert_eq!(d.breaker.unwrap().open_for, None);
    }

    #[tokio::test]
    async fn retry_budget_is_a_ratio_of_the_fleets_first_attempts() {
        let Some(server) = server() else { return };
        let s = store(&server, "t-retry").await;
        let rule = RetryRule {
            ratio_ppm: 500_000,
            floor_per_window: 0,
        };
        for _ in 0..4 {
            let a = s.admit(breaker_ask(true, None)).await.unwrap();
            assert_eq!(a.verdict, Verdict::Admitted);
        }
        let mut allowed = 0;
        for _ in 0..5 {
            if s.admit(breaker_ask(false, Some(rule)))
                .await
                .unwrap()
                .verdict
                == Verdict::Admitted
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 2, "50% of 4 first attempts");
        // A refused withdrawal took nothing: one more deposit pays for half a retry, two for one.
        s.admit(breaker_ask(true, None)).await.unwrap();
        s.admit(breaker_ask(true, None)).await.unwrap();
        let v = s
            .admit(breaker_ask(false, Some(rule)))
            .await
            .unwrap()
            .verdict;
        assert_eq!(v, Verdict::Admitted);
    }

    /// The rules of `store::probe::rules` on the script, in real time (Redis's clock).
    #[tokio::test]
    async fn half_open_probe_leases_are_counted_renewed_released_and_lapse() {
        let Some(server) = server() else { return };
        let s = store(&server, "t-probes").await;
        let pass = |d: Duration| tokio::time::sleep(d);
        let lease = Duration::from_millis(600);
        crate::store::probe::rules::probe_leases(&s, "b", lease, pass).await;
        // The leases' set expires with its last lease.
        s.update(Update::BreakerOpened {
            breaker: "b",
            cooldown: Duration::ZERO,
            force: true,
        })
        .await
        .unwrap();
        let mut ask = breaker_ask(false, None);
        ask.probe = Some(crate::store::ProbeAsk {
            token: 99,
            probes: 1,
            lease_ms: 600,
        });
        assert!(s.admit(ask).await.unwrap().leased);
        let mut c = s.connection().unwrap();
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg("{t-probes}:probes:b")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 600, "{ttl}");
    }

    fn pace_ask(max_wait_us: u64) -> Admit {
        Admit {
            pace: Some(PaceAsk {
                name: "r",
                interval_us: 100_000,
                burst: 2,
                max_wait_us,
            }),
            ..Admit::default()
        }
    }

    #[tokio::test]
    async fn pacing_hands_out_slots_from_one_bucket() {
        let Some(server) = server() else { return };
        let s = store(&server, "t-pace").await;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let a = s.admit(pace_ask(u64::MAX)).await.unwrap();
            assert_eq!(a.verdict, Verdict::Admitted);
            waits.push(a.pace_wait);
        }
        // The burst of two goes at once, then one slot every 100 ms (less the time the round
        // trips took).
        assert_eq!(&waits[..2], &[Duration::ZERO, Duration::ZERO]);
        assert!(waits[2] > Duration::from_millis(80) && waits[2] <= Duration::from_millis(100));
        assert!(waits[3] > Duration::from_millis(180) && waits[3] <= Duration::from_millis(200));
        // A caller that cannot wait that long is refused and takes no slot.
        let late = s.admit(pace_ask(50_000)).await.unwrap();
        assert_eq!(late.verdict, Verdict::PaceTooLate);
        let next = s.admit(pace_ask(u64::MAX)).await.unwrap();
        assert!(next.pace_wait <= Duration::from_millis(300) && next.pace_wait > waits[3]);
    }

    #[tokio::test]
    async fn checks_come_first_and_a_refusal_writes_nothing() {
        let Some(server) = server() else { return };
        let s = store(&server, "t-all").await;
        s.update(Update::BreakerOpened {
            breaker: "b",
            cooldown: Duration::from_secs(5),
            force: false,
        })
        .await
        .unwrap();
        let mut ask = breaker_ask(true, None);
        ask.pool = pool_ask(10).pool;
        ask.pace = pace_ask(u64::MAX).pace;
        let a = s.admit(ask.clone()).await.unwrap();
        assert_eq!(a.verdict, Verdict::BreakerOpen);
        let (_, committed) = a.pool.unwrap();
        assert_eq!(committed, 0, "nothing reserved");
        s.update(Update::BreakerClosed { breaker: "b" })
            .await
            .unwrap();
        let b = s.admit(ask).await.unwrap();
        assert_eq!(b.verdict, Verdict::Admitted);
        assert_eq!(b.pool.unwrap().1, 10);
        assert_eq!(b.pace_wait, Duration::ZERO, "the refused call took no slot");
    }

    #[tokio::test]
    async fn a_stopped_server_is_an_error_not_a_hang() {
        let Some(server) = server() else { return };
        let s = store(&server, "t-down").await;
        drop(server);
        let answer = tokio::time::timeout(Duration::from_secs(5), s.admit(pool_ask(1))).await;
        assert!(matches!(answer, Ok(Err(_))), "{answer:?}");
        assert!(s.ping().await.is_err());
    }

    /// `admit_here` until the caller's runtime has its connection (opened in the background).
    async fn admit_here_when_open(s: &RedisStore, ask: Admit) -> Admitted {
        let until = Instant::now() + Duration::from_secs(5);
        let mut ask = ask;
        loop {
            match s.admit_here(ask) {
                Ok(here) => return here.await.unwrap(),
                Err(back) => ask = back,
            }
            assert!(
                Instant::now() < until,
                "the runtime's connection never opened"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn runtimes(s: &RedisStore) -> usize {
        lock(&s.callers).list.len()
    }

    #[test]
    fn each_runtime_admits_on_its_own_connection_and_one_that_shut_down_is_forgotten() {
        let Some(server) = server() else { return };
        let home = tokio::runtime::Runtime::new().unwrap();
        let s = home.block_on(store(&server, "t-here"));
        // The home connection's runtime needs no second one: asked there, it says no.
        home.block_on(async {
            assert!(s.admit_here(pool_ask(1)).is_err());
        });
        assert_eq!(runtimes(&s), 0);

        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let a = first.block_on(admit_here_when_open(&s, pool_ask(10)));
        assert_eq!(a.verdict, Verdict::Admitted);
        assert_eq!(a.pool.unwrap().1, 10);
        // The same rules as on the home connection: the same window, the same total.
        let b = home.block_on(s.admit(pool_ask(10))).unwrap();
        assert_eq!(b.pool, Some((a.pool.unwrap().0, 20)));
        assert_eq!(runtimes(&s), 1);
        drop(first);

        // A paused clock, and a runtime without timers: neither is needed by the connection.
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let c = second.block_on(admit_here_when_open(&s, pool_ask(10)));
        assert_eq!(c.pool.unwrap().1, 30);
        assert_eq!(runtimes(&s), 1, "the first runtime's entry went with it");
        let untimed = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let d = untimed.block_on(async {
            let mut ask = pool_ask(10);
            loop {
                match s.admit_here(ask) {
                    Ok(here) => break here.await.unwrap(),
                    Err(back) => ask = back,
                }
                // No timers here: yield to let the connection open.
                std::thread::sleep(Duration::from_millis(1));
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(d.pool.unwrap().1, 40);
        assert_eq!(runtimes(&s), 2);

        // A ping (the reconnect loop's) lets every runtime's connection go.
        home.block_on(s.ping()).unwrap();
        assert_eq!(runtimes(&s), 0);
    }

    #[tokio::test]
    async fn a_stopped_server_fails_a_runtimes_own_connection_at_once() {
        let Some(server) = server() else { return };
        // Home on another runtime, so that this one gets its own connection.
        let home = tokio::runtime::Runtime::new().unwrap();
        let s = std::thread::scope(|scope| {
            scope
                .spawn(|| home.block_on(store(&server, "t-here-down")))
                .join()
                .unwrap()
        });
        admit_here_when_open(&s, pool_ask(1)).await;
        drop(server);
        let here = s.admit_here(pool_ask(1)).expect("still open here");
        let answer = tokio::time::timeout(Duration::from_secs(5), here).await;
        assert!(matches!(answer, Ok(Err(_))), "{answer:?}");
        assert_eq!(runtimes(&s), 0, "the broken connection was let go");
        assert!(s.admit_here(pool_ask(1)).is_err());
        home.shutdown_background();
    }
}
