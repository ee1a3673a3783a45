//! Every conformance case against the real PostgreSQL from `scripts/servers.sh`, each in its own
//! schema, each reported as its own test; then all of them again through `Arc<dyn MessageStore>`.

use async_trait::async_trait;
use imstore_conformance::{StoreFactory, require_env, unique_namespace};
use imstore_core::{ConversationId, MsgId, StoreSettings};
use imstore_postgres::{PostgresConfig, PostgresStore};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Connections per case's store: cases run concurrently against one server.
const CASE_POOL: u32 = 6;

/// Gives each case a fresh schema (the same migrations applied in it), dropped at the end.
pub struct PgFactory {
    url: String,
    admin: PgPool,
}

/// A factory on `IMSTORE_POSTGRES_URL`; panics with instructions when it is unset or unreachable.
pub async fn factory() -> PgFactory {
    let url = require_env("IMSTORE_POSTGRES_URL");
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at IMSTORE_POSTGRES_URL: {e}"));
    PgFactory { url, admin }
}

#[async_trait]
impl StoreFactory for PgFactory {
    type Store = PostgresStore;

    async fn create_namespace(&self) -> String {
        // Not "pg_...": PostgreSQL reserves that prefix for system schemas.
        let schema = unique_namespace("imspg");
        imstore_postgres::validate_schema_name(&schema).expect("namespace is a plain identifier");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&self.admin)
            .await
            .expect("create schema");
        schema
    }

    async fn open(&self, namespace: &str, settings: StoreSettings) -> PostgresStore {
        let config = PostgresConfig::new(&self.url)
            .with_schema(namespace)
            .with_max_connections(CASE_POOL);
        PostgresStore::connect(config, settings)
            .await
            .expect("connect and migrate")
    }

    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT content FROM {namespace}.messages WHERE conversation_id = $1 AND msg_id = $2"
        )))
        .bind(conversation.as_str())
        .bind(msg_id.as_i64())
        .fetch_optional(&self.admin)
        .await
        .expect("read raw content")
    }

    async fn set_raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) {
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {namespace}.messages SET content = $3 WHERE conversation_id = $1 AND msg_id = $2"
        )))
        .bind(conversation.as_str())
        .bind(msg_id.as_i64())
        .bind(bytes)
        .execute(&self.admin)
        .await
        .expect("write raw content");
        assert_eq!(done.rows_affected(), 1, "no such message to tamper with");
    }

    async fn drop_namespace(&self, namespace: &str) {
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {namespace} CASCADE")))
            .execute(&self.admin)
            .await
            .expect("drop schema");
    }
}

imstore_conformance::conformance_tests!(factory().await);

/// The same cases through the trait object, to catch forwarding bugs.
mod through_dyn {
    imstore_conformance::conformance_tests!(imstore_conformance::DynFactory(
        super::factory().await
    ));
}
