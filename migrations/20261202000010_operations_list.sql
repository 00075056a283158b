-- `GET /operations`: an owner's operations newest first (admins list by the primary key).
CREATE INDEX operations_owner_id ON operations (owner, id DESC);
