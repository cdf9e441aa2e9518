//! QEMU's option-value syntax: `key=value` lists split on `,` (with `,,` for a literal comma)
//! and an implied first key, the JSON form `-object '{"qom-type":...}'`, and the scalar value
//! types (sizes, numbers, booleans, base64) used inside them.

use super::QemuArgsError;

/// Implied keys that name what an option creates (used in messages).
const TYPE_KEYS: [&str; 4] = ["type", "driver", "qom-type", "fsdriver"];

/// One option's `key=value` list, consumed key by key; what is left at the end is unsupported.
#[derive(Debug)]
pub(super) struct Opts {
    /// The option as written, e.g. `-device`.
    option: String,
    /// The value of the implied/type key (`virtio-net-pci`, `user`, `q35`), for messages.
    kind: Option<String>,
    pairs: Vec<(String, String)>,
}

impl Opts {
    /// Parses `value` in QEMU's comma syntax. A first element without `=` is the value of
    /// `implied` (when the option has one); any other bare element `key` means `key=on`.
    pub(super) fn parse(option: &str, value: &str, implied: Option<&str>) -> Self {
        let mut pairs = Vec::new();
        for (i, elem) in split_commas(value).into_iter().enumerate() {
            if elem.is_empty() {
                continue;
            }
            match elem.split_once('=') {
                Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
                None => match implied {
                    Some(key) if i == 0 => pairs.push((key.to_string(), elem)),
                    _ => pairs.push((elem, "on".to_string())),
                },
            }
        }
        // Only a type-like implied key names the kind (`-smp 4` has no kind).
        let type_key = implied.filter(|k| TYPE_KEYS.contains(k));
        Self::from_pairs(option, pairs, type_key)
    }

    /// Parses `value` as JSON when it starts with `{` (QEMU's JSON form), else as a key list.
    pub(super) fn parse_maybe_json(
        option: &str,
        value: &str,
        type_key: &str,
    ) -> Result<Self, QemuArgsError> {
        if !value.trim_start().starts_with('{') {
            return Ok(Self::parse(option, value, Some(type_key)));
        }
        let json: serde_json::Value =
            serde_json::from_str(value).map_err(|e| QemuArgsError::BadValue {
                option: option.to_string(),
                value: value.to_string(),
                reason: format!("invalid JSON: {e}"),
            })?;
        let serde_json::Value::Object(map) = json else {
            return Err(QemuArgsError::BadValue {
                option: option.to_string(),
                value: value.to_string(),
                reason: "expected a JSON object".into(),
            });
        };
        let mut pairs = Vec::new();
        flatten_json("", &serde_json::Value::Object(map), &mut pairs);
        Ok(Self::from_pairs(option, pairs, Some(type_key)))
    }

    fn from_pairs(option: &str, pairs: Vec<(String, String)>, type_key: Option<&str>) -> Self {
        let kind = type_key.and_then(|k| {
            pairs
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        });
        Self {
            option: option.to_string(),
            kind,
            pairs,
        }
    }

    /// `-device virtio-net-pci,KEY=VALUE` (or `-smp KEY=VALUE`): how one key is named in messages.
    pub(super) fn describe(&self, key: &str, value: &str) -> String {
        match &self.kind {
            Some(kind) => format!("{} {kind},{key}={value}", self.option),
            None => format!("{} {key}={value}", self.option),
        }
    }

    /// Removes every occurrence of `key`; returns the last value (QEMU: the last one wins).
    pub(super) fn take(&mut self, key: &str) -> Option<String> {
        self.take_all(key).pop()
    }

    /// Removes every occurrence of `key`, returning the values in order.
    pub(super) fn take_all(&mut self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.pairs.retain(|(k, v)| {
            if k == key {
                out.push(v.clone());
                false
            } else {
                true
            }
        });
        out
    }

    /// Like [`Opts::take`], but a missing key is an error.
    pub(super) fn require(&mut self, key: &str) -> Result<String, QemuArgsError> {
        self.take(key).ok_or_else(|| QemuArgsError::Missing {
            option: self.describe_kind(),
            key: key.to_string(),
        })
    }

    /// Removes `key`, recording each occurrence as ignored.
    pub(super) fn ignore(&mut self, key: &str, ignored: &mut Vec<String>) {
        for v in self.take_all(key) {
            ignored.push(self.describe(key, &v));
        }
    }

    /// A bad-value error for `key` of this option.
    pub(super) fn bad(&self, key: &str, value: &str, reason: impl Into<String>) -> QemuArgsError {
        QemuArgsError::BadValue {
            option: format!("{} {key}", self.describe_kind()),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// `-device virtio-9p-pci`, or just `-smp`.
    pub(super) fn describe_kind(&self) -> String {
        match &self.kind {
            Some(kind) => format!("{} {kind}", self.option),
            None => self.option.clone(),
        }
    }

    /// Fails with the first key nobody consumed: cvmm does not support it.
    pub(super) fn finish(self) -> Result<(), QemuArgsError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((k, v)) => Err(QemuArgsError::Unsupported(self.describe(k, v))),
        }
    }
}

/// Splits on single commas; `,,` stands for one literal comma.
fn split_commas(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            cur.push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.push(cur);
    out
}

/// Flattens nested JSON objects into dotted keys, as QEMU's keyval does
/// (`{"a":{"b":"1"}}` -> `a.b=1`). Scalars become their text form.
fn flatten_json(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                flatten_json(&join(k), child, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                flatten_json(&join(&i.to_string()), child, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        serde_json::Value::Null => out.push((prefix.to_string(), String::new())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Parses a QEMU size (`2048M`, `2G`, `1.5G`, `512k`, optional trailing `B`) into bytes.
/// A bare number is in units of `default_unit` bytes (MiB for `-m`, bytes for objects).
pub(super) fn parse_size(s: &str, default_unit: u64) -> Result<u64, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let unit: u64 = match suffix.to_ascii_uppercase().as_str() {
        "" => default_unit,
        "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        "T" | "TB" => 1 << 40,
        _ => return Err(format!("unknown size suffix '{suffix}' (use K, M, G or T)")),
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(format!("'{num}' is not a number"));
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = whole.parse().map_err(|_| format!("'{num}' is too large"))?;
    let mut bytes = whole
        .checked_mul(unit)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if !frac.is_empty() {
        // Exact decimal fraction of the unit; it must come out as whole bytes.
        let digits = u32::try_from(frac.len()).unwrap_or(u32::MAX);
        let scale = 10u128
            .checked_pow(digits)
            .ok_or_else(|| format!("'{num}' has too many decimals"))?;
        let f: u128 = frac
            .parse()
            .map_err(|_| format!("'{num}' is not a number"))?;
        let part = f
            .checked_mul(u128::from(unit))
            .ok_or_else(|| format!("'{s}' is too large"))?;
        if !part.is_multiple_of(scale) {
            return Err(format!("'{s}' is not a whole number of bytes"));
        }
        let part = u64::try_from(part / scale).map_err(|_| format!("'{s}' is too large"))?;
        bytes = bytes
            .checked_add(part)
            .ok_or_else(|| format!("'{s}' is too large"))?;
    }
    Ok(bytes)
}

/// QEMU booleans: on/off, yes/no, true/false.
pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// Decimal or `0x` hexadecimal unsigned number.
pub(super) fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) if !h.is_empty() => u64::from_str_radix(h, 16).ok(),
        Some(_) => None,
        None if s.starts_with('+') => None,
        None => s.parse().ok(),
    }
}

/// Decodes standard (RFC 4648) base64 with `=` padding.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.chunks(4);
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i != last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | sextet(c)?;
        }
        acc <<= 6 * pad as u32;
        let decoded = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}
