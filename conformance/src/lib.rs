//! The imstore conformance suite: `CONTRACT.md` made executable.
//!
//! Every rule of the contract is at least one case in [`cases`]: a documented `pub async fn` taking a
//! [`StoreFactory`], whose first doc line states the behaviour it checks. A backend runs them all,
//! each reported as its own test, with one line:
//!
//! ```text
//! imstore_conformance::conformance_tests!(my_backend_factory().await);
//! ```
//!
//! The invoking crate needs `tokio` with the `macros` and `rt-multi-thread` features.

pub mod cases;
pub mod faults;
pub mod fixtures;
pub mod harness;
pub mod history;
pub mod memory;

pub use harness::{DynFactory, Harness, Setup, StoreFactory, require_env, unique_namespace};

/// Expands to one `#[tokio::test]` per conformance case, each building its store from `$factory`
/// (an expression, which may end in `.await`, evaluated once per test).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__with_cases!([$crate::__conformance_tests_for] $factory;);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests_for {
    ($factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let factory = $factory;
                $crate::cases::$case(&factory).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_names {
    ($($case:ident),* $(,)?) => {
        &[$(stringify!($case)),*]
    };
}

/// The name of every case, in the order the suite lists them.
pub const CASE_NAMES: &[&str] = crate::__with_cases!([crate::__case_names]);
