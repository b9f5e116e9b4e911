//! Call sites of policies built at run time: what `#[resilient]` emits as a `static`, made
//! from a [`PolicyBuilder`] and kept for the life of the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::{policy_config, ConfigError};
use crate::policy::{PolicyBuilder, PolicyError};

use super::CallSite;

impl PolicyBuilder {
    /// Build the call site: checked as [`check`](Self::check) does, then kept for the life of
    /// the process, like the attribute's `static`s (so build each policy once, at startup,
    /// not per call: each build is a call site of its own, with its own cache and estimates,
    /// though breakers, pools and pacers are shared by name as always).
    pub fn build(self) -> Result<&'static CallSite<'static>, PolicyError> {
        let policy = self.leak_policy()?;
        Ok(Box::leak(Box::new(CallSite::new(policy))))
    }
}

impl CallSite<'static> {
    /// The call site of the policy `name` in the process-wide configuration (its
    /// `[policy.NAME]` section, or [`Config::with_policy`](crate::Config::with_policy)), built
    /// on first use and the same site for every later lookup: one breaker slot, one cost
    /// estimate, one label in reports.
    ///
    /// A name the configuration does not have is an error naming the closest one it has
    /// ([`ConfigError::UnknownPolicy`]): a policy that silently fell back to defaults would be
    /// a limit failing open.
    ///
    /// ```
    /// use retry_runtime::{configure, CallSite, Config};
    ///
    /// configure(Config::from_toml_str("[policy.complete]\nmax = 5\nbreaker = \"openai\"\n").unwrap()).unwrap();
    /// let site = CallSite::configured("complete").unwrap();
    /// assert_eq!(site.policy().max_attempts(), 5);
    /// assert!(std::ptr::eq(site, CallSite::configured("complete").unwrap()));
    /// let error = CallSite::configured("compleet").unwrap_err();
    /// assert!(error.to_string().contains("did you mean `complete`?"), "{error}");
    /// ```
    pub fn configured(name: &str) -> Result<&'static CallSite<'static>, ConfigError> {
        static BUILT: Mutex<BTreeMap<String, &'static CallSite<'static>>> =
            Mutex::new(BTreeMap::new());
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(site) = built.get(name) {
            return Ok(site);
        }
        // Checked when it entered the configuration; were it not, the error would still be
        // this call's, never a panic.
        let site = policy_config(name)?
            .build()
            .map_err(|error| ConfigError::Invalid {
                path: None,
                message: error.to_string(),
            })?;
        built.insert(name.to_owned(), site);
        Ok(site)
    }
}
