//! API tokens: issuing, verifying and revoking the bearer tokens of the
//! HTTP API, over a [`TokenStore`] (PostgreSQL table `api_auth.tokens`, see
//! `migrations/20261127000002_api_tokens.sql`, or in memory).
//!
//! A token reads `pst_<token_id>_<secret>`: `token_id` is 8 random bytes in
//! hex (it finds the record; not a secret), `secret` is 32 random bytes in
//! hex of which only the SHA-256 digest is stored. Verification looks the
//! record up by id and compares the digest of the presented secret with the
//! stored one in constant time (`subtle`), so neither the database index nor
//! the comparison leaks how much of a secret was right.
//!
//! A token may expire (`expires_at`, from `token issue --ttl`): [`check`]
//! compares it with the caller's clock on every request. Only a token whose
//! secret matched is told apart as expired; every other refusal looks alike.
//!
//! **Architecture Invariant:** tokens are an edge concern. No saga
//! participant reads them and no runtime loop needs them; they are checked by
//! the HTTP API before a request reaches `runtime::commands`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row as _;
use subtle::ConstantTimeEq;

use crate::adapters::postgres::{classify, PgStore};
use crate::domain::{DurationMs, Timestamp, UserId};
use crate::runtime::store::StoreResult;
use crate::runtime::{Clock, StoreError, SystemClock};

/// Every token starts with this, so a leaked one is recognizable (secret
/// scanners) and a mistyped header is refused before any lookup.
pub const TOKEN_PREFIX: &str = "pst_";
/// Random bytes of a token id.
const TOKEN_ID_BYTES: usize = 8;
/// Random bytes of a token's secret.
pub const SECRET_BYTES: usize = 32;

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Principal {
    /// One user: their own orders and account only.
    User(UserId),
    /// An operator: every read, the admin endpoints, and orders placed on a
    /// named user's behalf.
    Admin,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::User(u) => write!(f, "user {u}"),
            Principal::Admin => f.write_str("admin"),
        }
    }
}

/// A stored token: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub principal: Principal,
    pub secret_sha256: [u8; 32],
    pub revoked: bool,
    pub created_at: Timestamp,
    /// When it stops working; None: never.
    pub expires_at: Option<Timestamp>,
}

impl TokenRecord {
    /// Whether it has expired at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// `active`, `revoked` or `expired` at `now` (revoked wins).
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.expired(now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// What [`check`] makes of a presented token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid(Principal),
    /// The secret matched, but the token expired at this moment.
    Expired(Timestamp),
    /// Malformed, unknown, revoked or a wrong secret: all alike.
    Invalid,
}

/// Where token records live.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new record; its id is fresh.
    async fn insert(&self, record: &TokenRecord) -> StoreResult<()>;
    /// The record with `token_id`, revoked or not.
    async fn find(&self, token_id: &str) -> StoreResult<Option<TokenRecord>>;
    /// Revokes one token; whether it existed and was active.
    async fn revoke(&self, token_id: &str) -> StoreResult<bool>;
    /// Revokes every active token of `user`; how many.
    async fn revoke_user(&self, user: &UserId) -> StoreResult<u64>;
    /// Every record (of `user` only, when given), oldest first.
    async fn list(&self, user: Option<&UserId>) -> StoreResult<Vec<TokenRecord>>;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// `(token_id, secret)` of a well-formed token, else None.
pub fn split_token(token: &str) -> Option<(&str, Vec<u8>)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 2 * TOKEN_ID_BYTES && unhex(id).is_some();
    let secret = unhex(secret).filter(|s| s.len() == SECRET_BYTES)?;
    id_ok.then_some((id, secret))
}

/// Issues a fresh token for `principal` that never expires; see
/// [`issue_at`].
pub async fn issue(store: &dyn TokenStore, principal: Principal) -> StoreResult<String> {
    issue_at(store, principal, SystemClock.now(), None).await
}

/// Issues a fresh token for `principal`, created at `now` and valid for
/// `ttl` (None: forever): stores its record and returns the token, the only
/// time the secret exists outside the caller.
pub async fn issue_at(
    store: &dyn TokenStore,
    principal: Principal,
    now: Timestamp,
    ttl: Option<DurationMs>,
) -> StoreResult<String> {
    assert!(ttl.is_none_or(|t| t.0 > 0), "a token lives for a positive time");
    let mut id = [0u8; TOKEN_ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let record = TokenRecord {
        token_id: hex(&id),
        principal,
        secret_sha256: digest(&secret),
        revoked: false,
        created_at: now,
        expires_at: ttl.map(|t| now.plus(t)),
    };
    store.insert(&record).await?;
    let token = format!("{TOKEN_PREFIX}{}_{}", record.token_id, hex(&secret));
    debug_assert!(split_token(&token).is_some(), "an issued token parses");
    Ok(token)
}

/// Whom `token` speaks for at `now`, or why not (see [`Verdict`]).
pub async fn check(store: &dyn TokenStore, token: &str, now: Timestamp) -> StoreResult<Verdict> {
    let Some((id, secret)) = split_token(token) else {
        return Ok(Verdict::Invalid);
    };
    let Some(record) = store.find(id).await? else {
        return Ok(Verdict::Invalid);
    };
    let matches: bool = digest(&secret).ct_eq(&record.secret_sha256).into();
    Ok(match record.expires_at {
        _ if !matches || record.revoked => Verdict::Invalid,
        Some(at) if now >= at => Verdict::Expired(at),
        _ => Verdict::Valid(record.principal),
    })
}

/// Whom `token` speaks for now (wall clock): None when it is malformed,
/// unknown, revoked, expired or its secret is wrong.
pub async fn verify(store: &dyn TokenStore, token: &str) -> StoreResult<Option<Principal>> {
    Ok(match check(store, token, SystemClock.now()).await? {
        Verdict::Valid(p) => Some(p),
        Verdict::Expired(_) | Verdict::Invalid => None,
    })
}

/// The token id of `token_or_id`: a whole token or just its id.
pub fn token_id_of(token_or_id: &str) -> Option<String> {
    if let Some((id, _)) = split_token(token_or_id) {
        return Some(id.to_string());
    }
    let id_ok = token_or_id.len() == 2 * TOKEN_ID_BYTES && unhex(token_or_id).is_some();
    id_ok.then(|| token_or_id.to_ascii_lowercase())
}

/// Tokens in memory (`--in-memory` and tests): gone with the process.
#[derive(Debug, Clone, Default)]
pub struct MemoryTokens {
    records: Arc<Mutex<BTreeMap<String, TokenRecord>>>,
}

impl MemoryTokens {
    pub fn new() -> MemoryTokens {
        MemoryTokens::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TokenRecord>> {
        self.records.lock().expect("token mutex")
    }
}

#[async_trait]
impl TokenStore for MemoryTokens {
    async fn insert(&self, record: &TokenRecord) -> StoreResult<()> {
        let mut records = self.lock();
        if records.contains_key(&record.token_id) {
            return Err(StoreError::Conflict(format!(
                "token id {} exists",
                record.token_id
            )));
        }
        records.insert(record.token_id.clone(), record.clone());
        Ok(())
    }

    async fn find(&self, token_id: &str) -> StoreResult<Option<TokenRecord>> {
        Ok(self.lock().get(token_id).cloned())
    }

    async fn revoke(&self, token_id: &str) -> StoreResult<bool> {
        Ok(self.lock().get_mut(token_id).is_some_and(|r| {
            let was_active = !r.revoked;
            r.revoked = true;
            was_active
        }))
    }

    async fn revoke_user(&self, user: &UserId) -> StoreResult<u64> {
        let mut revoked = 0;
        for r in self.lock().values_mut() {
            if !r.revoked && r.principal == Principal::User(user.clone()) {
                r.revoked = true;
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    async fn list(&self, user: Option<&UserId>) -> StoreResult<Vec<TokenRecord>> {
        let mut found: Vec<TokenRecord> = self
            .lock()
            .values()
            .filter(|r| user.is_none_or(|u| r.principal == Principal::User(u.clone())))
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.created_at, &a.token_id).cmp(&(b.created_at, &b.token_id)));
        Ok(found)
    }
}

/// The columns [`decode_record`] reads.
const RECORD_COLUMNS: &str =
    "token_id, user_id, is_admin, secret_sha256, revoked_at IS NOT NULL AS revoked, created_at, expires_at";

fn decode_record(row: &sqlx::postgres::PgRow) -> StoreResult<TokenRecord> {
    let token_id: String = row
        .try_get("token_id")
        .map_err(|e| StoreError::Fatal(format!("api_auth.tokens: {e}")))?;
    let bad = |e: String| StoreError::Fatal(format!("api_auth.tokens {token_id}: {e}"));
    let user: Option<String> = row.try_get("user_id").map_err(|e| bad(e.to_string()))?;
    let is_admin: bool = row.try_get("is_admin").map_err(|e| bad(e.to_string()))?;
    let hash: Vec<u8> = row.try_get("secret_sha256").map_err(|e| bad(e.to_string()))?;
    let revoked: bool = row.try_get("revoked").map_err(|e| bad(e.to_string()))?;
    let created_at: chrono::DateTime<chrono::Utc> =
        row.try_get("created_at").map_err(|e| bad(e.to_string()))?;
    let expires_at: Option<chrono::DateTime<chrono::Utc>> =
        row.try_get("expires_at").map_err(|e| bad(e.to_string()))?;
    let principal = match (is_admin, user) {
        (true, None) => Principal::Admin,
        (false, Some(u)) => Principal::User(UserId::parse(u).map_err(|e| bad(e.to_string()))?),
        _ => return Err(bad("neither an admin nor a user token".into())),
    };
    Ok(TokenRecord {
        principal,
        secret_sha256: hash
            .try_into()
            .map_err(|_| bad("digest is not 32 bytes".into()))?,
        revoked,
        created_at: Timestamp::from_datetime(created_at),
        expires_at: expires_at.map(Timestamp::from_datetime),
        token_id,
    })
}

#[async_trait]
impl TokenStore for PgStore {
    async fn insert(&self, record: &TokenRecord) -> StoreResult<()> {
        let user = match &record.principal {
            Principal::User(u) => Some(u.to_string()),
            Principal::Admin => None,
        };
        sqlx::query(
            "INSERT INTO api_auth.tokens \
               (token_id, user_id, is_admin, secret_sha256, created_at, revoked_at, expires_at) \
             VALUES ($1, $2, $3, $4, $6, CASE WHEN $5 THEN now() END, $7)",
        )
        .bind(&record.token_id)
        .bind(user)
        .bind(record.principal == Principal::Admin)
        .bind(record.secret_sha256.as_slice())
        .bind(record.revoked)
        .bind(record.created_at.to_datetime())
        .bind(record.expires_at.map(Timestamp::to_datetime))
        .execute(self.pool())
        .await
        .map_err(|e| classify(e, self.target()))?;
        Ok(())
    }

    async fn find(&self, token_id: &str) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM api_auth.tokens WHERE token_id = $1"
        ))
        .bind(token_id)
        .fetch_optional(self.pool())
        .await
        .map_err(|e| classify(e, self.target()))?;
        row.as_ref().map(decode_record).transpose()
    }

    async fn list(&self, user: Option<&UserId>) -> StoreResult<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM api_auth.tokens \
             WHERE $1::text IS NULL OR user_id = $1 ORDER BY created_at, token_id"
        ))
        .bind(user.map(UserId::as_str))
        .fetch_all(self.pool())
        .await
        .map_err(|e| classify(e, self.target()))?;
        rows.iter().map(decode_record).collect()
    }

    async fn revoke(&self, token_id: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE api_auth.tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL",
        )
        .bind(token_id)
        .execute(self.pool())
        .await
        .map_err(|e| classify(e, self.target()))?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_user(&self, user: &UserId) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE api_auth.tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user.as_str())
        .execute(self.pool())
        .await
        .map_err(|e| classify(e, self.target()))?;
        Ok(done.rows_affected())
    }
}

/// The tokens in the API's database (`DATABASE_URL_API`); a process
/// without one refuses, naming it.
#[async_trait]
impl TokenStore for crate::adapters::postgres::PgRoutes {
    async fn insert(&self, record: &TokenRecord) -> StoreResult<()> {
        self.api()?.insert(record).await
    }
    async fn find(&self, token_id: &str) -> StoreResult<Option<TokenRecord>> {
        self.api()?.find(token_id).await
    }
    async fn revoke(&self, token_id: &str) -> StoreResult<bool> {
        self.api()?.revoke(token_id).await
    }
    async fn revoke_user(&self, user: &UserId) -> StoreResult<u64> {
        self.api()?.revoke_user(user).await
    }
    async fn list(&self, user: Option<&UserId>) -> StoreResult<Vec<TokenRecord>> {
        self.api()?.list(user).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issued_tokens_verify_and_altered_or_revoked_ones_do_not() {
        let store = MemoryTokens::new();
        let alice = Principal::User(UserId::parse("alice").unwrap());
        let token = issue(&store, alice.clone()).await.unwrap();
        assert_eq!(verify(&store, &token).await.unwrap(), Some(alice));
        // Flip the last hex digit of the secret: same id, wrong digest.
        let mut altered = token.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(verify(&store, &altered).await.unwrap(), None);
        assert_eq!(verify(&store, "pst_nope").await.unwrap(), None);
        assert_eq!(verify(&store, "").await.unwrap(), None);
        let id = token_id_of(&token).unwrap();
        assert!(store.revoke(&id).await.unwrap());
        assert!(!store.revoke(&id).await.unwrap(), "already revoked");
        assert_eq!(verify(&store, &token).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_token_expires_at_its_ttl_and_only_a_matching_one_says_so() {
        let store = MemoryTokens::new();
        let alice = Principal::User(UserId::parse("alice").unwrap());
        let t0 = Timestamp::SIM_EPOCH;
        let token = issue_at(&store, alice.clone(), t0, Some(DurationMs(60_000)))
            .await
            .unwrap();
        let expiry = t0.plus(DurationMs(60_000));
        assert_eq!(
            check(&store, &token, t0.plus(DurationMs(59_999))).await.unwrap(),
            Verdict::Valid(alice)
        );
        assert_eq!(
            check(&store, &token, expiry).await.unwrap(),
            Verdict::Expired(expiry)
        );
        let mut altered = token.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            check(&store, &altered, expiry).await.unwrap(),
            Verdict::Invalid,
            "a wrong secret learns nothing about expiry"
        );
        let (id, _) = split_token(&token).unwrap();
        let record = store.find(id).await.unwrap().unwrap();
        assert_eq!((record.state(t0), record.state(expiry)), ("active", "expired"));
        assert!(store.revoke(id).await.unwrap());
        assert_eq!(check(&store, &token, t0).await.unwrap(), Verdict::Invalid);
        assert_eq!(store.find(id).await.unwrap().unwrap().state(expiry), "revoked");
    }

    #[tokio::test]
    async fn records_hold_only_the_digest() {
        let store = MemoryTokens::new();
        let token = issue(&store, Principal::Admin).await.unwrap();
        let (id, secret) = split_token(&token).unwrap();
        let record = store.find(id).await.unwrap().unwrap();
        assert_ne!(record.secret_sha256.as_slice(), secret.as_slice());
        assert_eq!(record.secret_sha256, digest(&secret));
    }
}
