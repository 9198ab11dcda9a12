-- Imported keys (issue 23): where each key pair was born.
--
-- `generated`: made inside the token (`C_GenerateKeyPair`, `CKA_LOCAL` true); `imported`:
-- made elsewhere and brought in with `C_CreateObject` (`keys import`, `POST
-- /apps/{id}/keys/import`, `migrate jwtplus`), `CKA_LOCAL` and `CKA_NEVER_EXTRACTABLE`
-- false. An imported key signs for at most `imported_key_max_life` before its app rotates,
-- and a `pending` imported row is never made a spare by the reconciler.
ALTER TABLE keys ADD COLUMN origin TEXT NOT NULL DEFAULT 'generated';
