-- JWTPlus migration (issue 23, `hsm-rotator migrate jwtplus`).
--
-- `legacy_key_sha512`: the SHA-512 (lowercase hex) of the app key the app had in JWTPlus,
-- accepted as a legacy credential on the app's routes until the app gets a new access
-- token (any access-token change sets it to NULL). The root key's counterpart is the
-- setting `root_key_legacy_sha512`, dropped when the root key is rotated.
-- `legacy_issuer`: the app's name in JWTPlus, the `iss` of the tokens JWTPlus issued; such
-- a token (with `jid` for `jti`) verifies while a key imported from JWTPlus signed it.
ALTER TABLE apps ADD COLUMN legacy_key_sha512 TEXT;
ALTER TABLE apps ADD COLUMN legacy_issuer TEXT;
CREATE INDEX apps_legacy_key ON apps (legacy_key_sha512) WHERE legacy_key_sha512 IS NOT NULL;
