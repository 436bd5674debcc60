//! Authentication: the credentials a server URL carries ([`Auth`]), `.creds` and nkey seed
//! files, and what goes into `CONNECT` to prove who this client is (the URL's user and
//! password or token, or the server's nonce signed with the nkey). Secrets are never printed:
//! not by `Debug`, not in an error.

use std::fmt;

use base64::Engine as _;

use crate::wire::error::ConnError;
use crate::Error;

/// Credentials carried in a server URL.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// None.
    #[default]
    None,
    /// `user:password@`.
    User {
        /// User.
        user: String,
        /// Password.
        pass: String,
    },
    /// `token@`.
    Token(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        match self {
            Auth::None => f.write_str("None"),
            Auth::User { user, .. } => write!(f, "User({user}, ***)"),
            Auth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// A `.creds` file's two parts: the user JWT and the nkey seed that signs the server's nonce.
pub struct Creds {
    /// The user JWT (not secret by itself: it is sent in `CONNECT`).
    pub jwt: String,
    /// The user's nkey seed (`SU…`): secret.
    pub seed: String,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Creds")
            .field("jwt", &self.jwt)
            .field("seed", &"***")
            .finish()
    }
}

/// Parses a `.creds` file as `nsc` writes it: the first value framed by `-----BEGIN …-----` /
/// `------END …------` lines is the JWT, the second the seed. The error never quotes the file.
pub fn parse_creds(text: &str) -> Result<Creds, Error> {
    let bad = |reason: &str| Error::invalid("nats.creds_file", reason.to_owned());
    let mut values = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("---") && line.contains("BEGIN") {
            let value = lines
                .by_ref()
                .find(|l| !l.is_empty())
                .ok_or_else(|| bad("a BEGIN line without a value"))?;
            values.push(value.to_owned());
        }
    }
    let mut values = values.into_iter();
    let (Some(jwt), Some(seed)) = (values.next(), values.next()) else {
        return Err(bad("expected a user JWT and an nkey seed"));
    };
    if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(&seed).is_err() {
        return Err(bad("the second value is not a user nkey seed"));
    }
    if jwt.split('.').count() != 3 {
        return Err(bad("the first value is not a JWT"));
    }
    Ok(Creds { jwt, seed })
}

/// Reads an nkey user seed from `path` (surrounding whitespace ignored), checked.
pub fn read_seed(path: &str) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(
            "nats.nkey_file",
            format!("cannot read {path}: {}", e.kind()),
        )
    })?;
    let seed = text.trim().to_owned();
    if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(&seed).is_err() {
        return Err(Error::invalid(
            "nats.nkey_file",
            format!("{path} does not hold a user nkey seed (SU…)"),
        ));
    }
    Ok(seed)
}

/// What signs the server's nonce in `CONNECT`.
pub(crate) enum Signer {
    Nkey(nkeys::KeyPair),
    Creds { jwt: String, key: nkeys::KeyPair },
}

impl Signer {
    /// The signer of the settings' `creds_file` (else `nkey_file`; `None` without either):
    /// the file read and checked now, so that a bad one is a clear error at start.
    pub(crate) fn load(creds_file: &str, nkey_file: &str) -> Result<Option<Signer>, Error> {
        if !creds_file.is_empty() {
            let text = std::fs::read_to_string(creds_file).map_err(|e| {
                Error::invalid(
                    "nats.creds_file",
                    format!("cannot read {creds_file}: {}", e.kind()),
                )
            })?;
            let creds = parse_creds(&text)?;
            let key = nkeys::KeyPair::from_seed(&creds.seed)
                .map_err(|_| Error::invalid("nats.creds_file", "not a valid nkey seed"))?;
            return Ok(Some(Signer::Creds {
                jwt: creds.jwt,
                key,
            }));
        }
        if !nkey_file.is_empty() {
            let seed = read_seed(nkey_file)?;
            let key = nkeys::KeyPair::from_seed(&seed)
                .map_err(|_| Error::invalid("nats.nkey_file", "not a valid nkey seed"))?;
            return Ok(Some(Signer::Nkey(key)));
        }
        Ok(None)
    }

    /// Adds `nkey` or `jwt` and `sig` (the nonce signed, base64url without padding, as the
    /// server reads it) to a `CONNECT` document.
    fn sign(&self, nonce: &str, connect: &mut serde_json::Value) -> Result<(), ConnError> {
        let key = match self {
            Signer::Nkey(key) => {
                connect["nkey"] = key.public_key().into();
                key
            }
            Signer::Creds { jwt, key } => {
                connect["jwt"] = jwt.as_str().into();
                key
            }
        };
        let sig = key
            .sign(nonce.as_bytes())
            .map_err(|_| ConnError::Protocol("cannot sign the server's nonce".into()))?;
        connect["sig"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sig)
            .into();
        Ok(())
    }
}

/// Adds the credentials to a `CONNECT` document: the URL's (`user`/`pass` or `auth_token`),
/// and with a `signer` the server's `nonce` signed (refused when the server sent none: it is
/// not configured for nkey or JWT users).
pub(crate) fn add_credentials(
    auth: &Auth,
    signer: Option<&Signer>,
    nonce: &str,
    connect: &mut serde_json::Value,
) -> Result<(), ConnError> {
    match auth {
        Auth::None => {}
        Auth::User { user, pass } => {
            connect["user"] = user.as_str().into();
            connect["pass"] = pass.as_str().into();
        }
        Auth::Token(token) => connect["auth_token"] = token.as_str().into(),
    }
    if let Some(signer) = signer {
        if nonce.is_empty() {
            return Err(ConnError::Auth(
                "the server sent no nonce to sign: it is not configured for nkey or JWT users"
                    .into(),
            ));
        }
        signer.sign(nonce, connect)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.creds` file as `nsc` writes it (the JWT's content does not matter to the client).
    fn creds_file(seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVQSJ9.c2ln\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    #[test]
    fn creds_files_parse_and_their_errors_never_quote_the_seed() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().expect("seed");
        let creds = parse_creds(&creds_file(&seed)).expect("valid");
        assert_eq!(creds.jwt, "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVQSJ9.c2ln");
        assert_eq!(creds.seed, seed);
        assert!(!format!("{creds:?}").contains(&seed));
        // An account seed, a truncated file, garbage: refused, the seed never in the message.
        let account = nkeys::KeyPair::new_account().seed().expect("seed");
        for bad in [
            creds_file(&account),
            creds_file(&seed[..20]),
            "-----BEGIN NATS USER JWT-----\n".to_owned(),
            "junk".to_owned(),
        ] {
            let e = parse_creds(&bad).expect_err("refused").to_string();
            assert!(!e.contains(&seed) && !e.contains(&account), "{e}");
        }
    }

    #[test]
    fn the_nonce_is_signed_as_the_server_verifies_it() {
        let user = nkeys::KeyPair::new_user();
        let public = user.public_key();
        let signer = Signer::Creds {
            jwt: "a.b.c".into(),
            key: nkeys::KeyPair::from_seed(&user.seed().expect("seed")).expect("seed"),
        };
        let mut connect = serde_json::json!({});
        signer.sign("nonce-123", &mut connect).expect("signed");
        assert_eq!(connect["jwt"], "a.b.c");
        // The server decodes base64url without padding and checks the ed25519 signature with
        // the user's public key (nats-server's client.go does exactly this).
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(connect["sig"].as_str().expect("sig"))
            .expect("base64url");
        let verifier = nkeys::KeyPair::from_public_key(&public).expect("public");
        verifier
            .verify(b"nonce-123", &sig)
            .expect("valid signature");
        assert!(verifier.verify(b"nonce-124", &sig).is_err());
        let mut connect = serde_json::json!({});
        Signer::Nkey(user).sign("n", &mut connect).expect("signed");
        assert_eq!(connect["nkey"], public.as_str());
    }
}
