//! Certificates made for one test with rcgen, as PEM files in a directory of its own: CAs,
//! and leaf certificates they sign (server or client, valid or expired).
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd};

pub struct Pki {
    dir: tempfile::TempDir,
}

/// A CA of the test's, to sign leaves with.
pub struct Ca(Issuer<'static, KeyPair>);

impl Pki {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The certificates `deploy/dev-certs.sh` makes (docker-compose's and the smoke test's):
    /// `ca.crt`, `server.crt`/`.key` (localhost, invitations, postgres, 127.0.0.1) and
    /// `client.crt`/`.key`.
    pub fn from_dev_certs_script() -> Self {
        let pki = Self::new();
        let made =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/dev-certs.sh"))
                .arg(pki.dir.path())
                .output()
                .expect("run deploy/dev-certs.sh");
        assert!(
            made.status.success(),
            "deploy/dev-certs.sh: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        pki
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read a PEM file")
    }

    /// Replaces a file the way a Kubernetes Secret volume does: the new content appears at
    /// once (written aside, then renamed over the old one).
    pub fn write(&self, name: &str, content: &str) {
        let aside = self.dir.path().join(format!(".{name}.new"));
        std::fs::write(&aside, content).expect("write a PEM file");
        std::fs::rename(&aside, self.path(name)).expect("rename over the old file");
    }

    /// A self-signed CA, written to `{name}.crt`.
    pub fn ca(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("invitations test CA {name}"));
        let key = KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("self-signed");
        self.write(&format!("{name}.crt"), &cert.pem());
        Ca(Issuer::new(params, key))
    }

    /// A certificate signed by `ca` for the DNS `names`, with the common name `common`,
    /// written to `{name}.crt` and its key to `{name}.key`; `expired` made it valid in 2020.
    pub fn leaf(&self, ca: &Ca, name: &str, names: &[&str], common: &str, expired: bool) {
        let names = names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, common);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &ca.0).expect("signed");
        self.write(&format!("{name}.crt"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }
}
