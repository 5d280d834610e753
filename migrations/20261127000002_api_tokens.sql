-- API tokens of the HTTP API (issue 7, "Authentication").
--
-- Tokens are an edge concern: the API authenticates a request before any
-- service sees it, and no saga participant ever reads a token. So they live
-- in a schema of their own, `api_auth`, owned by the API layer, rather than
-- in `user_svc` (whose tables are the User participant's saga state and are
-- written only through its transactions).
--
-- A token is `pst_<token_id>_<secret>`: `token_id` (16 hex digits) finds the
-- row, `secret` is 32 random bytes (64 hex digits) of which only the SHA-256
-- is stored; the API compares digests in constant time. A user token has a
-- `user_id`; an admin token has none.
CREATE SCHEMA IF NOT EXISTS api_auth;

CREATE TABLE api_auth.tokens (
    token_id      text        PRIMARY KEY,
    user_id       text,
    is_admin      boolean     NOT NULL,
    secret_sha256 bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    -- Exactly one of: an admin token, or a user's token.
    CHECK (is_admin = (user_id IS NULL))
);

-- `token revoke --user ID`.
CREATE INDEX tokens_user_id ON api_auth.tokens (user_id) WHERE user_id IS NOT NULL;
