-- The operator's view (issue 16): token expiry and a user's order list.
--
-- Tokens: `expires_at` is when a token stops working (NULL: never, as every
-- token issued before this migration). The API compares it with its clock on
-- every request and answers 401 "token expired" once it has passed.
ALTER TABLE api_auth.tokens ADD COLUMN expires_at timestamptz;
ALTER TABLE api_auth.tokens ADD CONSTRAINT tokens_expire_after_creation
    CHECK (expires_at IS NULL OR expires_at > created_at);

-- `GET /users/{id}/orders`: a user's orders newest first, paged by the key
-- (created_at, order_id) of the last order shown, read from this index alone.
CREATE INDEX orders_by_user ON order_svc.orders (user_id, created_at DESC, order_id DESC);
