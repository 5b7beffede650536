//! Detection: what a record means for security. Until rules are loaded from `patterns/`,
//! the built-in detections below recognise failed logins (nginx basic auth, application
//! `auth failed`-style messages and `event=auth.failed`-style events) and the nginx
//! error-log events that signal abuse. Each has a stable id that appears in reports.

use std::sync::LazyLock;

use regex::Regex;

use crate::parse::{ErrorLogEvent, Record, RecordKind};

/// A built-in detection.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Stable id, as shown in reports.
    pub id: &'static str,
    /// What it means, for reports.
    pub description: &'static str,
    /// Whether a hit is a failed login (counted per client and per account).
    pub auth_failure: bool,
    /// Whose accounts a failed login is against: [`APP_REALM`] accounts can be locked
    /// with SQL; nginx basic-auth users live in an htpasswd file and are only reported.
    pub realm: &'static str,
    /// Hits within the window that make a client blockable on this rule alone.
    pub client_threshold: Option<u32>,
}

/// The application's own accounts (what `account-lock.sql` locks).
pub const APP_REALM: &str = "app";
/// Users of nginx `auth_basic` (an htpasswd file).
pub const BASIC_AUTH_REALM: &str = "nginx-basic-auth";

/// The built-in detections, indexed by [`RuleId`].
pub const RULES: &[Rule] = &[
    Rule {
        id: "nginx-basic-auth-failure",
        description: "nginx basic authentication failed (unknown user or wrong password)",
        auth_failure: true,
        realm: BASIC_AUTH_REALM,
        client_threshold: None,
    },
    Rule {
        id: "nginx-basic-auth-missing",
        description: "request to a basic-auth location without credentials (browsers do this once before prompting)",
        auth_failure: false,
        realm: "",
        client_threshold: None,
    },
    Rule {
        id: "nginx-limit-req",
        description: "request rejected by nginx limit_req",
        auth_failure: false,
        realm: "",
        client_threshold: Some(30),
    },
    Rule {
        id: "nginx-access-forbidden",
        description: "request denied by an nginx allow/deny rule",
        auth_failure: false,
        realm: "",
        client_threshold: Some(20),
    },
    Rule {
        id: "backend-auth-failed",
        description: "the application logged a failed login",
        auth_failure: true,
        realm: APP_REALM,
        client_threshold: None,
    },
];

/// Index into [`RULES`].
pub type RuleId = u8;

/// Looks a rule up by id.
pub fn rule_index(id: &str) -> Option<RuleId> {
    RULES.iter().position(|r| r.id == id).map(|i| i as RuleId)
}

static AUTH_FAILED_EVENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:user[._-]?)?(?:auth(?:entication)?|log[._-]?in|sign[._-]?in)[._-]?(?:fail(?:ed|ure)?|denied|rejected|invalid)$|^failed[._-]?(?:login|auth(?:entication)?|sign[._-]?in)$").unwrap()
});
static AUTH_FAILED_MESSAGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:auth(?:entication)?|log-?in|sign-?in)(?: attempt)?\s+(?:has\s+)?(?:failed|failure|denied|rejected)(?:$|[\s.,;:!)\]])|\b(?:failed|invalid|unsuccessful)\s+(?:login|log-in|authentication|auth|sign-?in)\b|\b(?:invalid|wrong|bad|incorrect)\s+(?:password|credentials)\b").unwrap()
});

/// The detection a record triggers, if any.
pub fn detect(record: &Record<'_>) -> Option<RuleId> {
    let id = match record.kind? {
        RecordKind::ErrorLog => match record.error_event? {
            ErrorLogEvent::BasicAuthFailure => "nginx-basic-auth-failure",
            ErrorLogEvent::BasicAuthMissing => "nginx-basic-auth-missing",
            ErrorLogEvent::RateLimited => "nginx-limit-req",
            ErrorLogEvent::Forbidden => "nginx-access-forbidden",
            ErrorLogEvent::Other => return None,
        },
        RecordKind::Backend if is_backend_auth_failure(record) => "backend-auth-failed",
        _ => return None,
    };
    rule_index(id)
}

fn is_backend_auth_failure(record: &Record<'_>) -> bool {
    record
        .event
        .as_deref()
        .is_some_and(|e| AUTH_FAILED_EVENT.is_match(e))
        || record
            .message
            .as_deref()
            .is_some_and(|m| AUTH_FAILED_MESSAGE.is_match(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::backend;

    fn rule_of(line: &[u8]) -> Option<&'static str> {
        let r = backend::parse_json(line)
            .or_else(|| backend::parse_logfmt(line))
            .or_else(|| backend::parse_plain(line))?;
        detect(&r).map(|i| RULES[i as usize].id)
    }

    #[test]
    fn backend_failed_logins() {
        for line in [
            &br#"{"event":"auth.failed","user":"bob","ip":"1.2.3.4"}"#[..],
            br#"{"event":"login_failed","user":"bob"}"#,
            b"level=warn event=auth.failed user=bob ip=1.2.3.4",
            b"2024-01-15T10:23:45Z WARN auth failed for user bob from 1.2.3.4",
            b"2024-01-15T10:23:45Z INFO Failed login for user bob from 1.2.3.4",
            b"2024-01-15T10:23:45Z INFO invalid password for user bob",
            br#"{"msg":"Authentication failed","username":"x"}"#,
        ] {
            assert_eq!(
                rule_of(line),
                Some("backend-auth-failed"),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn benign_backend_lines() {
        for line in [
            &br#"{"event":"auth.succeeded","user":"bob"}"#[..],
            b"2024-01-15T10:23:45Z INFO login succeeded for user bob",
            b"2024-01-15T10:23:45Z INFO password reset email sent",
            b"level=info msg=\"auth failed-over to replica\" ip=1.2.3.4",
        ] {
            assert_eq!(rule_of(line), None, "{}", String::from_utf8_lossy(line));
        }
    }
}
