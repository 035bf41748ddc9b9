//! A certificate authority made for one test (`rcgen`), and the certificates it issues: valid,
//! expired, or for another host name, written as PEM files the server, nginx, the bridge and
//! Node read.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::server::TempDir;

/// A test CA; its certificate is at [`TestCa::ca_file`].
pub struct TestCa {
    dir: TempDir,
    key: KeyPair,
    cert: rcgen::Certificate,
    pub ca_file: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How long an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096 (rcgen's defaults).
    Current,
    /// From 2020-01-01 to 2021-01-01.
    Expired,
}

impl TestCa {
    pub fn new(label: &str) -> TestCa {
        let dir = TempDir::new(&format!("ca-{label}"));
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("duet test CA {label}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.0.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write CA certificate");
        TestCa {
            dir,
            key,
            cert,
            ca_file,
        }
    }

    /// Issues a server certificate for `hosts` (names or IP addresses), written as
    /// `<name>.pem` and `<name>.key`.
    pub fn issue(&self, name: &str, hosts: &[&str], validity: Validity) -> Issued {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(hosts).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        let issued = Issued {
            cert: self.dir.0.join(format!("{name}.pem")),
            key: self.dir.0.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }

    /// The CA's certificate, for a `reqwest` client to trust.
    pub fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.cert.pem().as_bytes()).expect("CA certificate")
    }
}

impl Issued {
    /// Puts `other`'s certificate and key in this one's files (what renewing a certificate on
    /// disk does), for a reload to pick up.
    pub fn replace_with(&self, other: &Issued) {
        std::fs::copy(&other.cert, &self.cert).expect("copy certificate");
        std::fs::copy(&other.key, &self.key).expect("copy key");
    }
}
