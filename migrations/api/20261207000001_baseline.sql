-- The HTTP API's schema, `api_auth` (tokens), as the one-database
-- migrations 20261127000002 and 20261201000002 left it: the baseline of its
-- own migrations (issue 25), in the database `DATABASE_URL_API` names. See
-- `migrations/order/20261207000001_baseline.sql` for how a schema carries
-- its history, and the original files for the comments.
CREATE SCHEMA IF NOT EXISTS api_auth;

CREATE TABLE api_auth.tokens (
    token_id      text        PRIMARY KEY,
    user_id       text,
    is_admin      boolean     NOT NULL,
    secret_sha256 bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    expires_at    timestamptz,
    -- Exactly one of: an admin token, or a user's token.
    CHECK (is_admin = (user_id IS NULL)),
    CONSTRAINT tokens_expire_after_creation
        CHECK (expires_at IS NULL OR expires_at > created_at)
);

CREATE INDEX tokens_user_id ON api_auth.tokens (user_id) WHERE user_id IS NOT NULL;
