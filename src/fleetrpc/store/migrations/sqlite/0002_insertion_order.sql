-- Insertion order: SQLite's rowid already grows with every insert; this
-- migration only keeps both backends at the same schema version.
SELECT 1;
