//! Values that are never printed: secrets, and the database URL (whose password is masked
//! wherever it could be shown: `Debug`, `Display`, errors, logs and panics).
use std::fmt;

/// A secret value: never printed by `Debug`, never shown by `--help`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A database URL: its password is never shown, by `Debug`, `Display` or an error. The text
/// itself is [`DatabaseUrl::expose`]d only to the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password, as written: what follows the first `:` of the user information, which
    /// ends at the last `@` (so a password with an unencoded `/`, `#`, `@` or `:` is still
    /// found, even in a URL no parser accepts).
    fn password(&self) -> Option<&str> {
        let (_, rest) = self.0.split_once("://")?;
        let (userinfo, _) = rest.rsplit_once('@')?;
        let (_, password) = userinfo.split_once(':')?;
        (!password.is_empty()).then_some(password)
    }

    /// The URL with its password replaced by `***`.
    pub fn masked(&self) -> String {
        match self.password() {
            Some(password) => self.0.replacen(password, "***", 1),
            None => self.0.clone(),
        }
    }

    /// `text` with every copy of this URL masked and of its password (as written or
    /// percent-decoded) replaced by `***`: for messages of libraries that quote the URL.
    pub fn redact(&self, text: &str) -> String {
        let mut redacted = text.replace(&self.0, &self.masked());
        if let Some(password) = self.password() {
            let decoded = percent_decoded(password);
            for form in [password, decoded.as_str()] {
                // A very short password would blank out ordinary words of the message.
                if form.len() >= 3 {
                    redacted = redacted.replace(form, "***");
                }
            }
        }
        redacted
    }
}

/// `%XX` sequences decoded; anything else kept as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(high), Some(low)) if hex(high).is_some() && hex(low).is_some() => {
                decoded.push((hex(high).unwrap_or(0) * 16 + hex(low).unwrap_or(0)) as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.masked())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl PartialEq<&str> for DatabaseUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod database_url {
    use super::DatabaseUrl;

    const PASSWORDS: [&str; 6] = [
        "pa/ss#w@rd",
        "p@ss:w%rd",
        "a:b:c@d/e#f",
        "s3cr%2Fet%23x",
        "base64+/==#",
        "plainpassword",
    ];

    #[test]
    fn the_password_is_masked_however_it_is_written() {
        for password in PASSWORDS {
            let url = DatabaseUrl::from(format!(
                "postgres://invitations:{password}@db.internal:5432/invitations?sslmode=require"
            ));
            let masked = url.masked();
            assert_eq!(
                masked,
                "postgres://invitations:***@db.internal:5432/invitations?sslmode=require"
            );
            assert!(!format!("{url:?}").contains(password));
            assert!(!url.to_string().contains(password));
            // A library's message that quotes the URL, or the password alone.
            let message = format!(
                "The connection string '{}' cannot be parsed; password {password} rejected",
                url.expose()
            );
            let redacted = url.redact(&message);
            assert!(!redacted.contains(password), "{redacted}");
            assert!(
                redacted.contains("invitations:***@db.internal"),
                "{redacted}"
            );
        }
    }

    #[test]
    fn a_percent_encoded_password_is_masked_decoded_too() {
        let url = DatabaseUrl::from("postgres://u:s3cr%2Fet%23x@h/db");
        assert_eq!(
            url.redact("auth failed for s3cr/et#x"),
            "auth failed for ***"
        );
    }

    #[test]
    fn urls_without_a_password_are_left_alone() {
        for url in [
            "sqlite://invitations.db",
            "postgres://postgres@127.0.0.1:5432/test",
        ] {
            let url = DatabaseUrl::from(url);
            assert_eq!(url.masked(), url.expose());
            assert_eq!(url.redact("nothing to hide"), "nothing to hide");
        }
    }
}
