//! Naming rules shared by zone files and registrations: labels, the names
//! derived from them, and DNS-SD metadata.

use hickory_proto::rr::Name;

/// Parses a zone's apex as a client or a zone file writes it: absolute
/// with or without the final dot, never the root.
pub fn parse_apex(s: &str) -> Result<Name, String> {
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    if trimmed.is_empty() {
        return Err(format!(
            "zone \"{s}\" is the root; give the apex this file serves, e.g. \"svc.example\""
        ));
    }
    // The apex is always absolute, with or without the trailing dot.
    let mut name = Name::from_ascii(trimmed)
        .map_err(|e| format!("zone \"{s}\" is not a valid domain name: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// What a label names, for the names the server derives from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A service: `_<service>._tcp.<apex>` and `<service>.<apex>`.
    Service,
    /// An instance: `<instance>.<apex>`.
    Instance,
}

impl Owner {
    /// How messages name the label.
    pub fn noun(self) -> &'static str {
        match self {
            Owner::Service => "service name",
            Owner::Instance => "instance name",
        }
    }
}

/// Checks that the names the server derives from a service or instance name
/// fit in 255 bytes under `apex`: `_<service>._tcp.<apex>` for a service,
/// `<instance>.<apex>` for an instance. Err holds a human message.
pub fn check_fits(owner: Owner, label: &str, apex: &Name) -> Result<(), String> {
    // Bytes the derived name adds to the apex: `_<service>` and `_tcp`, or
    // `<instance>`, each label with its length byte.
    let extra = match owner {
        Owner::Service => 1 + 1 + label.len() + 5,
        Owner::Instance => 1 + label.len(),
    };
    if owner == Owner::Service && label.len() > 62 {
        return Err(format!(
            "service name \"{label}\" is too long: _{label} would be a {}-character label (at most 63)",
            label.len() + 1
        ));
    }
    // The apex's wire length without building it: a length byte per label,
    // and the root label.
    let apex_len = apex.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    if apex_len + extra > 255 {
        let derived = match owner {
            Owner::Service => format!("_{label}._tcp.{apex}"),
            Owner::Instance => format!("{label}.{apex}"),
        };
        return Err(format!(
            "{} \"{label}\" is too long for this zone: {derived} would exceed the 255-byte limit of a DNS name",
            owner.noun()
        ));
    }
    Ok(())
}

/// Checks a single DNS label for service/instance/tag names: letters, digits
/// and hyphens, not starting or ending with a hyphen, 1 to 63 characters.
/// `kind` names the thing in the message (e.g. "service name"). `Err` holds a
/// human-readable message.
pub fn check_label(kind: &str, label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if label.starts_with('_') {
        return Err(format!(
            "{kind} \"{label}\" must not start with '_' (the underscore of SRV names is added automatically)"
        ));
    }
    if label.contains('.') {
        return Err(format!(
            "{kind} \"{label}\" must be a single DNS label, without '.'"
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "{kind} \"{label}\" contains {c:?}; only letters, digits and '-' are allowed"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("{kind} \"{label}\" must not start or end with '-'"));
    }
    if label.len() > 63 {
        return Err(format!(
            "{kind} \"{label}\" is {} characters long; a DNS label has at most 63",
            label.len()
        ));
    }
    Ok(())
}

/// Checks one metadata entry, which becomes the TXT string `key=value`
/// (RFC 6763 section 6.4): the key is printable US-ASCII without '=', and the
/// whole string fits in one TXT character-string (255 bytes).
/// The problem is in the key, or (too long) in the value.
pub fn check_metadata(key: &str, value: &str) -> Result<(), BadMetadata> {
    let in_key = |message| BadMetadata {
        in_value: false,
        message,
    };
    if key.is_empty() {
        return Err(in_key("metadata key must not be empty".into()));
    }
    if let Some(c) = key.chars().find(|c| !(' '..='~').contains(c) || *c == '=') {
        return Err(in_key(format!(
            "metadata key \"{key}\" contains {c:?}; keys are printable ASCII without '='"
        )));
    }
    let len = key.len() + 1 + value.len();
    if len > 255 {
        return Err(BadMetadata {
            in_value: true,
            message: format!(
                "metadata \"{key}=...\" is {len} bytes long; a TXT string holds at most 255"
            ),
        });
    }
    Ok(())
}

/// Why a metadata entry is refused.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BadMetadata {
    /// The value makes it too long (else the key is at fault), so a zone
    /// file error points at the value.
    pub in_value: bool,
    /// What is wrong.
    pub message: String,
}

/// The most TXT data an instance's metadata may make, in bytes: RFC 6763
/// section 6.2 puts the limit of a DNS-SD TXT record at 8900 bytes (and a
/// record's data can never exceed 65535).
pub const MAX_TXT_BYTES: usize = 8900;

/// Checks that metadata, as TXT strings (a length byte and `key=value`
/// each), stays within [`MAX_TXT_BYTES`].
pub fn check_metadata_total<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    let total: usize = entries
        .into_iter()
        .map(|(k, v)| 2 + k.len() + v.len())
        .sum();
    if total > MAX_TXT_BYTES {
        return Err(format!(
            "metadata makes a TXT record of {total} bytes; DNS-SD allows at most {MAX_TXT_BYTES} (RFC 6763 section 6.2)"
        ));
    }
    Ok(())
}
