//! Every case of the suite. Each is a `pub async fn` whose first doc line is the behaviour it checks.

#![allow(clippy::missing_panics_doc)]

use imstore_core::*;

use crate::fixtures::*;
use crate::harness::{Harness, Setup, StoreFactory};

#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*!{$($args)*

            insert_then_get_returns_the_message,
        }
    };
}

/// An inserted message reads back with its fields, status Normal, version 1 and the store's time.
pub async fn insert_then_get_returns_the_message<F: StoreFactory>(f: &F) {
    let h = Harness::start(f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let m = c.text("hello");
    assert_eq!(
        h.store.insert(m.clone()).await.unwrap(),
        InsertOutcome::Inserted
    );
    let v = h.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
    assert_eq!(v.status, Status::Normal);
    assert_eq!(v.version, 1);
    assert_eq!(v.created_at, h.clock.now());
    assert_eq!(v.sender_id, c.alice);
    assert_eq!(v.body.unwrap().content, b"hello");
    assert!(v.tombstone.is_none());
    h.finish().await;
}
