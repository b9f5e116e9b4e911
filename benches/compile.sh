#!/usr/bin/env bash
# What `#[resilient]` costs at compile time, against backon and against no retries at all.
#
# Usage (from anywhere; needs only the Rust toolchain and crates.io):
#
#   benches/compile.sh              # 100 functions per crate, best of 3 timed builds
#   FNS=1 benches/compile.sh        # one function per crate (what a crate pays before any fn)
#   RUNS=5 benches/compile.sh       # more timed builds per crate
#   KEEP=0 benches/compile.sh       # remove the generated crates and their targets at the end
#   INCREMENTAL=1 benches/compile.sh  # cargo's debug default instead (see below)
#
# It generates three crates under target/compile-bench/, each its own workspace with its own
# CARGO_TARGET_DIR there (so nothing here waits on the workspace's build lock), with the same
# FNS async functions around the same body (a `&Client` call, `Result<String, LlmError>`):
#
#   plain      the bodies as they are
#   backon     each body in `(|| async { tokio::time::timeout(10s, ..) }).retry(Exponential..
#              .with_max_times(3)).when(..)` under a 30 s `tokio::time::timeout`: backon's
#              nearest spelling of the policy below (4 attempts, per-attempt timeout, deadline;
#              backon has no breaker and no cached fallback)
#   resilient  `#[resilient(max = 4, timeout = "10s", deadline = "30s", breaker = "openai",
#              fallback = cached)]` and `#[retry_on(429, 500..=599, timeout)]`
#
# All three share one module (the error enum with its `Classify` and `From<Rejected>`, the
# client) and depend on retry-runtime, so that the difference between them is the wrapping
# alone. Each crate builds its dependencies once (untimed), then its own source is touched and
# `cargo build` (debug) is timed RUNS times; the best is printed with the size of the crate's
# own `.rlib` and the cost per function over plain.
#
# The timed builds use CARGO_INCREMENTAL=0: with incremental compilation on, a touched but
# unchanged file is rebuilt from the incremental cache and the time says nothing about the
# expansion. Non-incremental is also what CI and `cargo install` pay. INCREMENTAL=1 times
# cargo's default instead: what a rebuild costs when nothing changed, kept for comparison
# with figures taken that way.
set -euo pipefail

FNS=${FNS:-100}
RUNS=${RUNS:-3}
KEEP=${KEEP:-1}
INCREMENTAL=${INCREMENTAL:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out="$root/target/compile-bench"
runtime="$root/retry-runtime"

if ! [[ $FNS =~ ^[1-9][0-9]*$ && $RUNS =~ ^[1-9][0-9]*$ ]]; then
    echo "FNS and RUNS must be positive integers (got FNS=$FNS RUNS=$RUNS)" >&2
    exit 2
fi

if [[ $INCREMENTAL == 1 ]]; then
    export CARGO_INCREMENTAL=1
    mode=incremental
else
    export CARGO_INCREMENTAL=0
    mode=non-incremental
fi
# A user's RUSTFLAGS would change every crate alike but make the figures incomparable with
# the recorded ones; say so rather than silently measure something else.
if [[ -n ${RUSTFLAGS:-} ]]; then
    echo "note: RUSTFLAGS is set ($RUSTFLAGS); the figures include its effect" >&2
fi

mkdir -p "$out"

# The module every variant shares: what a real LLM client crate has around its calls.
common_rs() {
    cat <<'EOF'
use std::time::Duration;

use retry_runtime::{Classify, ErrorClass, Rejected};

#[derive(Debug)]
pub enum LlmError {
    Http { status: u16, retry_after: Option<Duration> },
    Timeout,
    Runtime(Rejected),
}

impl From<Rejected> for LlmError {
    fn from(r: Rejected) -> Self {
        LlmError::Runtime(r)
    }
}

impl Classify for LlmError {
    fn class(&self) -> ErrorClass {
        match self {
            LlmError::Http { status, .. } => ErrorClass::Status(*status),
            LlmError::Timeout => ErrorClass::Timeout,
            LlmError::Runtime(r) => r.class(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl LlmError {
    /// What `#[retry_on(429, 500..=599, timeout)]` retries, for the backon variant.
    pub fn retryable(&self) -> bool {
        matches!(self.class(), ErrorClass::Status(429 | 500..=599) | ErrorClass::Timeout)
    }
}

pub struct Client {
    pub base: String,
}

impl Client {
    /// Stands in for the HTTP call: async, borrows the client and the prompt, can fail.
    pub async fn send(&self, route: &str, prompt: &str) -> Result<String, LlmError> {
        if prompt.is_empty() {
            return Err(LlmError::Http { status: 400, retry_after: None });
        }
        tokio::task::yield_now().await;
        Ok(format!("{}/{route}: {prompt}", self.base))
    }
}
EOF
}

# One function of a variant; $2 is its index.
function_rs() {
    local variant=$1 i=$2
    case $variant in
    plain)
        cat <<EOF

pub async fn complete_$i(client: &Client, prompt: &str) -> Result<String, LlmError> {
    let answer = client.send("route_$i", prompt).await?;
    Ok(answer)
}
EOF
        ;;
    backon)
        cat <<EOF

pub async fn complete_$i(client: &Client, prompt: &str) -> Result<String, LlmError> {
    let attempt = || async {
        match tokio::time::timeout(Duration::from_secs(10), client.send("route_$i", prompt)).await {
            Ok(answer) => answer,
            Err(_) => Err(LlmError::Timeout),
        }
    };
    let retried = attempt
        .retry(ExponentialBuilder::default().with_max_times(3))
        .when(|e: &LlmError| e.retryable());
    match tokio::time::timeout(Duration::from_secs(30), retried).await {
        Ok(answer) => answer,
        Err(_) => Err(LlmError::Timeout),
    }
}
EOF
        ;;
    resilient)
        cat <<EOF

#[resilient(max = 4, timeout = "10s", deadline = "30s", breaker = "openai", fallback = cached)]
#[retry_on(429, 500..=599, timeout)]
pub async fn complete_$i(client: &Client, #[key] prompt: &str) -> Result<String, LlmError> {
    let answer = client.send("route_$i", prompt).await?;
    Ok(answer)
}
EOF
        ;;
    esac
}

generate() {
    local variant=$1 dir="$out/$1"
    local name="cb_$1"
    mkdir -p "$dir/src"
    local extra=""
    [[ $variant == backon ]] && extra='backon = "1.6"'
    # `[workspace]` makes the crate its own workspace: it lives under the repository's
    # target/, and cargo would otherwise take the repository's Cargo.toml as its workspace.
    cat >"$dir/Cargo.toml" <<EOF
[package]
name = "$name"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = "src/lib.rs"

[dependencies]
retry-runtime = { path = "$runtime" }
tokio = { version = "1.40", features = ["rt", "time"] }
$extra

[workspace]
EOF
    # The workspace's lock: the same dependency versions as the repository's own builds, and
    # no resolution against the registry's newest releases. Copied only when absent or older,
    # so a rerun does not re-resolve (cargo prunes what the crate does not use).
    if [[ ! -f $dir/Cargo.lock || $root/Cargo.lock -nt $dir/Cargo.lock ]]; then
        cp "$root/Cargo.lock" "$dir/Cargo.lock"
    fi
    {
        echo "//! Generated by benches/compile.sh: $FNS functions, variant $variant."
        echo "#![allow(dead_code)]"
        echo
        case $variant in
        backon) echo "use backon::{ExponentialBuilder, Retryable};" ;;
        resilient) echo "use retry_runtime::{resilient, retry_on};" ;;
        esac
        common_rs
        for ((i = 0; i < FNS; i++)); do
            function_rs "$variant" "$i"
        done
    } >"$dir/src/lib.rs.new"
    # Rewrite only when the text changed, so the dependency build below stays fresh.
    if cmp -s "$dir/src/lib.rs.new" "$dir/src/lib.rs"; then
        rm "$dir/src/lib.rs.new"
    else
        mv "$dir/src/lib.rs.new" "$dir/src/lib.rs"
    fi
}

now_ms() {
    local ns
    ns=$(date +%s%N)
    echo $((ns / 1000000))
}

# Builds a variant RUNS times after its dependencies; prints "best_ms rlib_bytes".
measure() {
    local variant=$1 dir="$out/$1"
    local name="cb_$1"
    export CARGO_TARGET_DIR="$dir/target"
    # Dependencies (and a first build of the crate), untimed. Its output goes to a log: on a
    # failure the log says why.
    if ! (cd "$dir" && cargo build --quiet) >"$dir/deps.log" 2>&1; then
        echo "building $variant failed; see $dir/deps.log" >&2
        cat "$dir/deps.log" >&2
        exit 1
    fi
    local best="" t0 t1 ms
    : >"$dir/build.log"
    for ((r = 0; r < RUNS; r++)); do
        touch "$dir/src/lib.rs"
        t0=$(now_ms)
        (cd "$dir" && cargo build --quiet) >>"$dir/build.log" 2>&1
        t1=$(now_ms)
        ms=$((t1 - t0))
        if [[ -z $best || $ms -lt $best ]]; then best=$ms; fi
    done
    # The crate's own rlib: the newest, since a run in the other INCREMENTAL mode left one
    # under another hash beside it.
    local rlib
    rlib=$(ls -t "$dir"/target/debug/deps/lib"$name"-*.rlib 2>/dev/null | head -n 1 || true)
    if [[ -z $rlib ]]; then
        echo "no lib$name-*.rlib under $dir/target/debug/deps" >&2
        exit 1
    fi
    echo "$best $(stat -c %s "$rlib")"
}

variants=(plain backon resilient)
declare -A ms bytes
for v in "${variants[@]}"; do
    generate "$v"
done
for v in "${variants[@]}"; do
    echo "building $v ($FNS fns, deps first, then best of $RUNS)..." >&2
    # A failure inside the process substitution is not this shell's: `read` finding nothing,
    # or half a line, is how it shows.
    if ! read -r ms[$v] bytes[$v] < <(measure "$v") || [[ -z ${bytes[$v]:-} ]]; then
        echo "measuring $v failed" >&2
        exit 1
    fi
done

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=""
if ! git -C "$root" diff --quiet HEAD -- retry-runtime retry-macros retry-grammar 2>/dev/null; then
    dirty=" (runtime or macros modified in the working tree)"
fi
echo
echo "compile time, $FNS async fns, debug, $mode, best of $RUNS; commit $commit$dirty"
rustc --version
printf '%-10s %10s %12s %16s\n' variant "build ms" "rlib MiB" "ms/fn vs plain"
for v in "${variants[@]}"; do
    mib=$(awk -v b="${bytes[$v]}" 'BEGIN { printf "%.2f", b / 1048576 }')
    if [[ $v == plain ]]; then
        per="-"
    else
        per=$(awk -v a="${ms[$v]}" -v p="${ms[plain]}" -v n="$FNS" 'BEGIN { printf "%+.2f", (a - p) / n }')
    fi
    printf '%-10s %10s %12s %16s\n' "$v" "${ms[$v]}" "$mib" "$per"
done
goal_time=$([[ ${ms[resilient]} -le ${ms[backon]} ]] && echo met || echo "not met")
goal_size=$([[ ${bytes[resilient]} -le ${bytes[backon]} ]] && echo met || echo "not met")
echo "goal (resilient <= backon): build time $goal_time, rlib size $goal_size"

if [[ $KEEP == 0 ]]; then
    rm -rf "$out"
fi
