-- Per-token metadata the JWTPlus API lists with sessions (client IP, user agent), as JSON.
ALTER TABLE tokens ADD COLUMN meta TEXT;
