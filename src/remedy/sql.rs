//! Account locks as PostgreSQL that a human runs with `psql -f`. Account names come from
//! log lines, so they are attacker-controlled text: each is a SQL literal quoted for any
//! content, under settings that make the quoting mean what it says
//! (`standard_conforming_strings = on`, so a backslash is just a backslash, and
//! `ON_ERROR_STOP`, so a failure stops everything inside one transaction). Evidence stays
//! in `report.md`: no log text reaches the SQL file, not even in a comment.
//!
//! The lock records what it changed (the account and its previous lock value) in a table
//! of its own, keyed by the bundle's id, so the unlock reverts exactly those accounts and
//! leaves alone one that was locked before, for another reason.

use serde::Serialize;

use crate::aggregate::AccountCase;

/// Longest account name logwarden writes into SQL; longer names are reported instead.
pub const MAX_NAME_BYTES: usize = 64 * 1024;
/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1); logwarden refuses them.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Where accounts live and how a lock is written.
#[derive(Clone, Debug, Serialize)]
pub struct LockTarget {
    /// `users` or `schema.users`.
    pub table: String,
    pub user_column: String,
    pub lock_column: String,
    /// The table in which the lock records what it changed.
    pub record_table: String,
    /// `Some(table)`: also insert one `account_takeover` row per locked account.
    pub events_table: Option<String>,
}

impl Default for LockTarget {
    fn default() -> Self {
        LockTarget {
            table: "users".into(),
            user_column: "username".into(),
            lock_column: "account_locked".into(),
            record_table: "logwarden_account_locks".into(),
            events_table: None,
        }
    }
}

/// A name that was proposed but cannot be written as SQL.
#[derive(Clone, Debug, Serialize)]
pub struct RefusedName {
    /// The name, as shown in the report (escaped there).
    pub name: String,
    pub why: String,
}

/// A quoted identifier, schema-qualified if given so; refuses what PostgreSQL would
/// truncate or cannot hold.
pub fn quote_identifier(name: &str, what: &str) -> Result<String, String> {
    name.split('.')
        .map(|part| {
            if part.is_empty() || part.contains('\0') {
                return Err(format!("{what} {name:?}: empty part or NUL byte"));
            }
            if part.len() > MAX_IDENTIFIER_BYTES {
                return Err(format!(
                    "{what} {name:?}: {part:?} is longer than {MAX_IDENTIFIER_BYTES} bytes, which PostgreSQL would truncate"
                ));
            }
            Ok(format!("\"{}\"", part.replace('"', "\"\"")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|parts| parts.join("."))
}

/// A standard SQL string literal: quotes doubled, nothing else special (with
/// `standard_conforming_strings = on`); an escape string for a name with control
/// characters ([`escaped_literal`]). `Err` for text PostgreSQL cannot hold.
pub fn quote_literal(value: &str) -> Result<String, String> {
    if value.contains('\0') {
        return Err("contains a NUL byte, which PostgreSQL text cannot hold".into());
    }
    if value.contains('\u{fffd}') {
        return Err(
            "was not valid UTF-8 in the log (replacement characters), so the real name is unknown".into()
        );
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(format!("is longer than {MAX_NAME_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Ok(escaped_literal(value));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

/// A literal for a name with control characters (a tab, a carriage return, an escape):
/// exact, like a plain literal, but written as an escape string with each of them as a
/// `\uXXXX` escape, so that the script a person reviews shows them instead of letting
/// them move the cursor or hide text. Escape strings read backslashes the same whatever
/// `standard_conforming_strings` says; a `\u` above U+007F needs a UTF8 database, and
/// anywhere else the script stops with an error rather than lock a different name.
fn escaped_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The lock and unlock scripts for `names`, and the names that could not be written.
pub struct LockScripts {
    pub lock: String,
    pub unlock: String,
    pub refused: Vec<RefusedName>,
    /// Names written into the scripts.
    pub locked: Vec<String>,
}

struct Idents {
    table: String,
    user: String,
    lock: String,
    record: String,
    events: Option<String>,
    /// How the scan told names apart, and so how a row's name is compared with a
    /// proposed one.
    case: AccountCase,
}

impl Idents {
    /// The SQL condition that the row `u` holds the proposed name `proposed`: ignoring
    /// case, `lower()` of both, so that the proposed name (lower-cased) finds the row
    /// however the table spells it.
    fn holds(&self, proposed: &str) -> String {
        let user = &self.user;
        match self.case {
            AccountCase::Sensitive => format!("u.{user} = {proposed}"),
            AccountCase::Insensitive => format!("lower(u.{user}) = lower({proposed})"),
        }
    }
}

fn idents(t: &LockTarget, case: AccountCase) -> Result<Idents, String> {
    Ok(Idents {
        case,
        table: quote_identifier(&t.table, "--users-table")?,
        user: quote_identifier(&t.user_column, "--user-column")?,
        lock: quote_identifier(&t.lock_column, "--lock-column")?,
        record: quote_identifier(&t.record_table, "--lock-record-table")?,
        events: t.events_table.as_deref().map(|e| quote_identifier(e, "--events-table")).transpose()?,
    })
}

const PREAMBLE: &str = "\\set ON_ERROR_STOP on
SET standard_conforming_strings = on;
SET client_encoding = 'UTF8';
";

/// Builds both scripts for the bundle `bundle_id`, finding `names` in the table as the
/// scan told accounts apart (`case`).
pub fn lock_scripts(
    target: &LockTarget,
    bundle_id: &str,
    names: &[String],
    case: AccountCase,
) -> Result<LockScripts, String> {
    let id = idents(target, case)?;
    let bundle = quote_literal(bundle_id)?;
    let mut refused = Vec::new();
    let mut literals = Vec::new();
    let mut locked = Vec::new();
    for name in names {
        match quote_literal(name) {
            Ok(lit) => {
                literals.push(lit);
                locked.push(name.clone());
            }
            Err(why) => refused.push(RefusedName { name: name.clone(), why }),
        }
    }
    Ok(LockScripts {
        lock: lock_sql(&id, &bundle, &literals),
        unlock: unlock_sql(&id, &bundle),
        refused,
        locked,
    })
}

fn lock_sql(id: &Idents, bundle: &str, literals: &[String]) -> String {
    let Idents { table, user, lock, record, .. } = id;
    let case_note = match id.case {
        AccountCase::Sensitive => String::new(),
        AccountCase::Insensitive => format!(
            "-- Names are found ignoring case (lower() of both), as the scan counted them
-- (--account-case insensitive): every spelling of a name in {table} is locked.
"
        ),
    };
    let mut sql = format!(
        "-- Generated by logwarden for review (bundle {bundle}). Evidence: report.md.
-- Locks the accounts listed below that are not locked yet, records what it changed in
-- {record}, and prints the accounts it locked, then those it found no row for (an
-- attacker's guess, or a name spelled otherwise in {table}). Run: psql -f account-lock.sql
-- Undo: psql -f account-unlock.sql (unlocks exactly what this script locked).
{case_note}{PREAMBLE}BEGIN;
CREATE TABLE IF NOT EXISTS {record} (
    bundle_id text NOT NULL,
    account text NOT NULL,
    previous boolean,
    locked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bundle_id, account)
);
"
    );
    if literals.is_empty() {
        sql.push_str("-- No account is proposed for locking.\nCOMMIT;\n");
        return sql;
    }
    let values: Vec<String> = literals.iter().map(|l| format!("    ({l})")).collect();
    let matches = id.holds("p.account");
    sql.push_str(&format!(
        "WITH proposed(account) AS (VALUES
{}
),
target AS (
    SELECT u.{user} AS account, u.{lock} AS previous
    FROM {table} u JOIN proposed p ON {matches}
    WHERE u.{lock} IS DISTINCT FROM true
    FOR UPDATE OF u
),
changed AS (
    UPDATE {table} u SET {lock} = true
    FROM target t WHERE u.{user} = t.account
    RETURNING u.{user} AS account, t.previous
),
recorded AS (
    INSERT INTO {record} (bundle_id, account, previous)
    SELECT {bundle}, account, previous FROM changed
    ON CONFLICT (bundle_id, account) DO NOTHING
    RETURNING account
)
",
        values.join(",\n")
    ));
    match &id.events {
        Some(events) => sql.push_str(&format!(
            "INSERT INTO {events} (event_type, username, details)
SELECT 'account_takeover', account, 'locked by logwarden bundle ' || {bundle} FROM recorded
RETURNING username AS locked;
"
        )),
        None => sql.push_str("SELECT account AS locked FROM recorded;\n"),
    }
    sql.push_str(&not_found_sql(id, &values));
    sql.push_str("COMMIT;\n");
    sql
}

/// The proposed names (`values`, one `(literal)` row each) that no account row holds: a
/// lock that printed only what it changed left a reviewer to notice which names were
/// missing from it (a guessed name, or one the table spells in another case).
fn not_found_sql(id: &Idents, values: &[String]) -> String {
    let (table, found) = (&id.table, id.holds("p.account"));
    format!(
        "SELECT p.account AS not_found FROM (VALUES
{}
) AS p(account)
WHERE NOT EXISTS (SELECT 1 FROM {table} u WHERE {found});
",
        values.join(",\n")
    )
}

fn unlock_sql(id: &Idents, bundle: &str) -> String {
    let Idents { table, user, lock, record, .. } = id;
    format!(
        "-- Generated by logwarden (bundle {bundle}): undoes account-lock.sql.
-- Restores the previous lock value of exactly the accounts that script locked and that
-- are still locked; an account locked before it ran stays locked.
{PREAMBLE}BEGIN;
WITH restored AS (
    UPDATE {table} u SET {lock} = r.previous
    FROM {record} r
    WHERE r.bundle_id = {bundle} AND u.{user} = r.account AND u.{lock} = true
    RETURNING u.{user} AS account
),
forgotten AS (
    DELETE FROM {record} WHERE bundle_id = {bundle} RETURNING account
)
SELECT account AS unlocked FROM restored;
COMMIT;
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name with control characters is written without any (they would move the
    /// cursor or hide text in the script a person reviews), as an escape string.
    #[test]
    fn control_characters_are_written_as_escapes() {
        let lit = quote_literal("a\tb\rc\u{1b}[2J\u{85}'\\").unwrap();
        assert_eq!(lit, "E'a\\u0009b\\u000Dc\\u001B[2J\\u0085''\\\\'");
        assert!(!lit.chars().any(char::is_control));
        assert_eq!(quote_literal("plain\\name").unwrap(), "'plain\\name'");
    }

    #[test]
    fn literals_double_quotes_and_nothing_else() {
        assert_eq!(quote_literal("x'); DROP TABLE users;--").unwrap(), "'x''); DROP TABLE users;--'");
        assert_eq!(quote_literal("a\\'b").unwrap(), "'a\\''b'");
        assert!(quote_literal("nul\0").is_err());
        assert!(quote_literal("bad \u{fffd}").is_err());
        assert!(quote_literal(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn identifiers_are_quoted_and_bounded() {
        assert_eq!(quote_identifier("app.users", "t").unwrap(), "\"app\".\"users\"");
        assert_eq!(quote_identifier("we\"ird", "t").unwrap(), "\"we\"\"ird\"");
        assert!(quote_identifier(&"a".repeat(64), "t").is_err());
        assert!(quote_identifier("a..b", "t").is_err());
    }

    #[test]
    fn scripts_carry_no_unquoted_name() {
        let names = ["o'brien".into(), "bad\0".into()];
        let s = lock_scripts(&LockTarget::default(), "lw-1", &names, AccountCase::Sensitive).unwrap();
        assert!(s.lock.contains("('o''brien')"));
        assert_eq!(s.refused.len(), 1);
        assert!(s.lock.starts_with("-- Generated"));
        assert!(s.lock.contains("\\set ON_ERROR_STOP on\nSET standard_conforming_strings = on;"));
    }
}
