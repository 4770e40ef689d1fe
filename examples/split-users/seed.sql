-- A users table that grew a profile and an activity column set: split it
-- vertically into users, user_profiles and user_activity (spec.yaml).
CREATE TABLE users (
    id           bigserial PRIMARY KEY,
    email        text NOT NULL,
    name         text,
    bio          text,
    avatar_url   text,
    prefs        jsonb,
    last_seen_at timestamptz,
    legacy_col   text
);
INSERT INTO users (email, name, bio, prefs, last_seen_at, legacy_col)
SELECT 'u' || g || '@example.com', 'n' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'bio ' || g END,
       jsonb_build_object('g', g), CASE WHEN g % 2 = 0 THEN '2026-01-01'::timestamptz + g * interval '1 minute' END, 'old'
  FROM generate_series(1, 2000) g;
ANALYZE users;
