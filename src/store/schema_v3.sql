-- orderwatch schema, version 3: two nullable item columns. Existing columns keep their names and
-- meaning; times stay RFC 3339 UTC text.

-- Musement time (`Date`) of the poll whose item facts are stored (vouchers, product_id,
-- product_title, product_date, max_confirmation_time, confirm_deadline): a poll answered with
-- an older `Date` does not replace them. NULL: not known (rows from before version 3), so the
-- next poll's facts replace them.
ALTER TABLE order_items ADD COLUMN facts_as_of TEXT;

-- Our clock, when a poll of the item's order first did not list the item (logged once as a
-- warning); NULL again once a poll lists it.
ALTER TABLE order_items ADD COLUMN missing_since TEXT;
