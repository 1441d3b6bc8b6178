//! Throwaway certificate authorities and server certificates for the TLS tests, made with the `openssl`
//! command (P-256 keys, valid two days, for 127.0.0.1 and localhost).

use std::path::{Path, PathBuf};
use std::process::Command;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::harness::temp_dir;

pub struct Pki {
    pub dir: PathBuf,
}

/// A certificate file and its key file.
#[derive(Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// The certificate in DER, as a TLS peer presents it.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(&self.cert).expect("certificate").to_vec()
    }

    /// Copies the certificate and key over `to`'s files, one after the other, each by rename (as renewal
    /// tools do).
    pub fn install(&self, to: &Pair) {
        install_file(&self.cert, &to.cert);
        install_file(&self.key, &to.key);
    }
}

pub fn install_file(from: &Path, to: &Path) {
    let staging = to.with_extension("new");
    std::fs::copy(from, &staging).expect("copy");
    std::fs::rename(&staging, to).expect("rename");
}

impl Pki {
    pub fn new() -> Pki {
        let found = Command::new("sh").args(["-c", "command -v openssl"]).output().expect("sh");
        assert!(found.status.success(), "the TLS tests need openssl; install it with: apt-get install -y openssl");
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).expect("dir");
        Pki { dir }
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl").args(args).current_dir(&self.dir).output().expect("openssl");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// A self-signed certificate authority named `name`.
    pub fn ca(&self, name: &str) -> Pair {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            &format!("/CN=sealpost test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        Pair { cert: self.dir.join(cert), key: self.dir.join(key) }
    }

    /// A server certificate named `name` for 127.0.0.1 and localhost, signed by `ca`.
    pub fn server(&self, ca: &Pair, name: &str) -> Pair {
        let (cert, key, csr, ext) =
            (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
        std::fs::write(
            self.dir.join(&ext),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        let (ca_cert, ca_key) = (ca.cert.display().to_string(), ca.key.display().to_string());
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ]);
        Pair { cert: self.dir.join(cert), key: self.dir.join(key) }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
