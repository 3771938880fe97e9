//! `VaultItem` (`vi`): one secret of one type, in exactly one section.
//!
//! The spec holds visible fields in plain text, and write-only fields that carry either a
//! plaintext on its way to the mutating webhook or the mask `*****`. What is stored for good
//! is the sealed form in `spec.sealed`. CEL rules make the API server refuse any plaintext
//! that reaches it unsealed, so a bypassed webhook cannot make one persist.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::condition::Condition;
use super::{ApiError, SECRET_MASK};

/// Size limits of item fields. Kubernetes keeps objects in etcd, which refuses values above
/// about 1.5 MiB, and caps all annotations of an object at 256 KiB together. A client-side
/// `kubectl apply` copies the sealed fields into the `last-applied-configuration`
/// annotation, so the largest sealed value must fit in that annotation with room to spare.
pub mod limits {
    /// `description`, in characters.
    pub const DESCRIPTION: usize = 1024;
    /// Entries in `allowedHosts`.
    pub const ALLOWED_HOSTS: usize = 32;
    /// One `allowedHosts` entry: the longest DNS name.
    pub const HOST: usize = 253;
    /// `credentialSet.username`.
    pub const USERNAME: usize = 256;
    /// `credentialSet.password`, `certificateArchive.password`.
    pub const PASSWORD: usize = 1024;
    /// `secret.value`: room for large JWTs and API tokens.
    pub const SECRET_VALUE: usize = 8 * 1024;
    /// `certificateArchive.archive`, base64 of a PKCS#12 file (48 KiB of binary).
    pub const ARCHIVE: usize = 64 * 1024;
    /// `certificate.pem`: a certificate chain.
    pub const PEM: usize = 64 * 1024;
    /// `file.name`.
    pub const FILE_NAME: usize = 255;
    /// `file.content`, base64: 128 KiB of text, 96 KiB of file. Sealed, this is about 176 KiB,
    /// which still fits the 256 KiB annotation limit of a client-side `kubectl apply`.
    pub const FILE_CONTENT: usize = 128 * 1024;
    /// `oneTimePassword.secret`, the TOTP seed as text.
    pub const OTP_SECRET: usize = 256;
    /// A sealed short value (`password`, `archivePassword`, `secret`): the X-Wing envelope
    /// adds about 1.5 KiB to the plaintext.
    pub const SEALED_SHORT: usize = 4 * 1024;
    /// `sealed.value`.
    pub const SEALED_VALUE: usize = 16 * 1024;
    /// `sealed.archive`.
    pub const SEALED_ARCHIVE: usize = 128 * 1024;
    /// `sealed.content`.
    pub const SEALED_CONTENT: usize = 256 * 1024;
}

/// One secret of one type. Its write-only values can be replaced or deleted, never read back.
// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monivault.io",
    version = "v1alpha1",
    kind = "VaultItem",
    namespaced,
    status = "VaultItemStatus",
    derive = "PartialEq",
    shortname = "vi",
    category = "monivault",
    cel,
    doc = "One secret (credential set, token, certificate archive, certificate, file or one-time-password seed) in a vault section. Write-only fields are sealed by the monivault webhook and never shown again.",
    selectable = ".spec.section",
    selectable = ".spec.type",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Section", type_ = "string", json_path = ".spec.section"),
    printcolumn(
        name = "Username",
        type_ = "string",
        json_path = ".spec.credentialSet.username"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.secret",
        description = "***** once a secret is stored (read from status, so GitOps sees no drift)"
    ),
    printcolumn(
        name = "KeyVersion",
        type_ = "integer",
        json_path = ".status.keyVersion",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.credentialSet) == (self.type == 'CredentialSet')").message("credentialSet is required when type is CredentialSet and not allowed for other types"))]
#[x_kube(validation = Rule::new("has(self.secret) == (self.type == 'Secret')").message("secret is required when type is Secret and not allowed for other types"))]
#[x_kube(validation = Rule::new("has(self.certificateArchive) == (self.type == 'CertificateArchive')").message("certificateArchive is required when type is CertificateArchive and not allowed for other types"))]
#[x_kube(validation = Rule::new("has(self.certificate) == (self.type == 'Certificate')").message("certificate is required when type is Certificate and not allowed for other types"))]
#[x_kube(validation = Rule::new("has(self.file) == (self.type == 'File')").message("file is required when type is File and not allowed for other types"))]
#[x_kube(validation = Rule::new("has(self.oneTimePassword) == (self.type == 'OneTimePassword')").message("oneTimePassword is required when type is OneTimePassword and not allowed for other types"))]
#[x_kube(validation = Rule::new("self.type != 'CredentialSet' || (has(self.sealed) && has(self.sealed.password))").message("a CredentialSet item needs a password: set credentialSet.password (the webhook seals it) or sealed.password (from monivault seal)"))]
#[x_kube(validation = Rule::new("self.type != 'Secret' || (has(self.sealed) && has(self.sealed.value))").message("a Secret item needs a value: set secret.value (the webhook seals it) or sealed.value (from monivault seal)"))]
#[x_kube(validation = Rule::new("self.type != 'CertificateArchive' || (has(self.sealed) && has(self.sealed.archive))").message("a CertificateArchive item needs an archive: set certificateArchive.archive (the webhook seals it) or sealed.archive (from monivault seal)"))]
#[x_kube(validation = Rule::new("self.type != 'File' || (has(self.sealed) && has(self.sealed.content))").message("a File item needs content: set file.content (the webhook seals it) or sealed.content (from monivault seal)"))]
#[x_kube(validation = Rule::new("self.type != 'OneTimePassword' || (has(self.sealed) && has(self.sealed.secret))").message("a OneTimePassword item needs a secret: set oneTimePassword.secret (the webhook seals it) or sealed.secret (from monivault seal)"))]
#[x_kube(validation = Rule::new("!has(self.sealed) || ((!has(self.sealed.password) || self.type == 'CredentialSet') && (!has(self.sealed.value) || self.type == 'Secret') && (!has(self.sealed.archive) || self.type == 'CertificateArchive') && (!has(self.sealed.archivePassword) || self.type == 'CertificateArchive') && (!has(self.sealed.content) || self.type == 'File') && (!has(self.sealed.secret) || self.type == 'OneTimePassword'))").message("sealed may only hold the write-only fields of the item's type (CredentialSet: password; Secret: value; CertificateArchive: archive, archivePassword; File: content; OneTimePassword: secret)"))]
#[serde(rename_all = "camelCase")]
pub struct VaultItemSpec {
    /// What the item holds. Immutable.
    #[serde(rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("type is immutable: delete the item and create a new one"))]
    pub item_type: ItemType,

    /// The VaultSection the item belongs to; granting `use` on the section grants use of
    /// the item. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("section is immutable: delete the item and create it in the other section"))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("section must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub section: String,

    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::DESCRIPTION))]
    pub description: Option<String>,

    /// The hosts the item may be sent to: exact names (`shop.example.com`) or wildcards
    /// (`*.example.com`, any subdomain). The runner refuses every other host, even for
    /// monitors whose authors may use the item. Empty: the item is sent nowhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ALLOWED_HOSTS), inner(length(min = 1, max = limits::HOST)))]
    #[x_kube(validation = Rule::new("self.all(h, h.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$'))").message("allowedHosts entries must be lowercase host names like shop.example.com or wildcards like *.example.com, without scheme, port or path"))]
    pub allowed_hosts: Vec<String>,

    /// Type `CredentialSet`: a username and a write-only password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_set: Option<CredentialSetSpec>,

    /// Type `Secret`: one write-only value, e.g. an API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSpec>,

    /// Type `CertificateArchive`: a write-only PKCS#12 archive and its password. Subject,
    /// issuer and validity appear in status once ingested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_archive: Option<CertificateArchiveSpec>,

    /// Type `Certificate`: a public certificate in PEM. Nothing in it is secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateSpec>,

    /// Type `File`: a file name and write-only base64 content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSpec>,

    /// Type `OneTimePassword`: a write-only TOTP seed and its public settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_password: Option<OneTimePasswordSpec>,

    /// Sealed write-only values, one per field: what `monivault seal` prints and what a
    /// GitOps repository holds. The webhook fills it from plaintext fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedFields>,
}

/// The item types of the reference service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ItemType {
    CredentialSet,
    Secret,
    CertificateArchive,
    Certificate,
    File,
    OneTimePassword,
}

impl ItemType {
    /// The type's name as written in `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::CredentialSet => "CredentialSet",
            ItemType::Secret => "Secret",
            ItemType::CertificateArchive => "CertificateArchive",
            ItemType::Certificate => "Certificate",
            ItemType::File => "File",
            ItemType::OneTimePassword => "OneTimePassword",
        }
    }

    /// The write-only fields an item of this type has, required ones first.
    pub fn secret_fields(self) -> &'static [SecretField] {
        match self {
            ItemType::CredentialSet => &[SecretField::Password],
            ItemType::Secret => &[SecretField::Value],
            ItemType::CertificateArchive => &[SecretField::Archive, SecretField::ArchivePassword],
            ItemType::Certificate => &[],
            ItemType::File => &[SecretField::Content],
            ItemType::OneTimePassword => &[SecretField::Secret],
        }
    }
}

impl fmt::Display for ItemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one write-only field. [`SecretField::as_str`] is stable: it is the key under
/// `spec.sealed` and part of the AAD that binds a ciphertext to its field, so renaming one
/// would make every stored value of that field unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretField {
    /// `credentialSet.password`.
    Password,
    /// `secret.value`.
    Value,
    /// `certificateArchive.archive`.
    Archive,
    /// `certificateArchive.password`, sealed as `sealed.archivePassword`.
    ArchivePassword,
    /// `file.content`.
    Content,
    /// `oneTimePassword.secret`.
    Secret,
}

impl SecretField {
    /// Every write-only field.
    pub const ALL: [SecretField; 6] = [
        SecretField::Password,
        SecretField::Value,
        SecretField::Archive,
        SecretField::ArchivePassword,
        SecretField::Content,
        SecretField::Secret,
    ];

    /// The stable name: the key under `spec.sealed`, and the field in AAD bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretField::Password => "password",
            SecretField::Value => "value",
            SecretField::Archive => "archive",
            SecretField::ArchivePassword => "archivePassword",
            SecretField::Content => "content",
            SecretField::Secret => "secret",
        }
    }

    /// The item type that has this field.
    pub fn item_type(self) -> ItemType {
        match self {
            SecretField::Password => ItemType::CredentialSet,
            SecretField::Value => ItemType::Secret,
            SecretField::Archive | SecretField::ArchivePassword => ItemType::CertificateArchive,
            SecretField::Content => ItemType::File,
            SecretField::Secret => ItemType::OneTimePassword,
        }
    }

    /// Whether an item of its type is incomplete without it.
    pub fn is_required(self) -> bool {
        self != SecretField::ArchivePassword
    }

    /// The longest plaintext accepted. The API server only ever sees the mask, so the
    /// webhook enforces this.
    pub fn max_plaintext_len(self) -> usize {
        match self {
            SecretField::Password | SecretField::ArchivePassword => limits::PASSWORD,
            SecretField::Value => limits::SECRET_VALUE,
            SecretField::Archive => limits::ARCHIVE,
            SecretField::Content => limits::FILE_CONTENT,
            SecretField::Secret => limits::OTP_SECRET,
        }
    }

    /// The longest sealed value accepted in `spec.sealed`, as the CRD schema states it.
    pub fn max_sealed_len(self) -> usize {
        match self {
            SecretField::Password | SecretField::ArchivePassword | SecretField::Secret => {
                limits::SEALED_SHORT
            }
            SecretField::Value => limits::SEALED_VALUE,
            SecretField::Archive => limits::SEALED_ARCHIVE,
            SecretField::Content => limits::SEALED_CONTENT,
        }
    }

    /// JSON pointer (RFC 6901) of the plaintext-or-mask field, for JSON patches.
    pub fn spec_pointer(self) -> &'static str {
        match self {
            SecretField::Password => "/spec/credentialSet/password",
            SecretField::Value => "/spec/secret/value",
            SecretField::Archive => "/spec/certificateArchive/archive",
            SecretField::ArchivePassword => "/spec/certificateArchive/password",
            SecretField::Content => "/spec/file/content",
            SecretField::Secret => "/spec/oneTimePassword/secret",
        }
    }

    /// JSON pointer (RFC 6901) of the sealed value, for JSON patches.
    pub fn sealed_pointer(self) -> &'static str {
        match self {
            SecretField::Password => "/spec/sealed/password",
            SecretField::Value => "/spec/sealed/value",
            SecretField::Archive => "/spec/sealed/archive",
            SecretField::ArchivePassword => "/spec/sealed/archivePassword",
            SecretField::Content => "/spec/sealed/content",
            SecretField::Secret => "/spec/sealed/secret",
        }
    }
}

impl fmt::Display for SecretField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecretField {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SecretField::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| ApiError::UnknownSecretField(s.to_owned()))
    }
}

/// Message of the rule that refuses unsealed plaintext; one per write-only field.
macro_rules! masked_rule_message {
    ($field:literal) => {
        concat!(
            $field,
            " holds a plaintext that was not sealed: the monivault webhook must be running. It seals write-only values into spec.sealed and leaves only *****."
        )
    };
}

/// `credentialSet`: visible username, write-only password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSetSpec {
    /// The username; visible to anyone who may read the item.
    #[schemars(length(min = 1, max = limits::USERNAME))]
    pub username: String,

    /// Write-only. A plaintext password (sealed by the webhook), or `*****` once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::PASSWORD))]
    #[x_kube(validation = Rule::new("self == '*****'").message(masked_rule_message!("credentialSet.password")).reason(Reason::FieldValueForbidden))]
    pub password: Option<String>,
}

/// `secret`: one write-only value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Write-only. A plaintext token (sealed by the webhook), or `*****` once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SECRET_VALUE))]
    #[x_kube(validation = Rule::new("self == '*****'").message(masked_rule_message!("secret.value")).reason(Reason::FieldValueForbidden))]
    pub value: Option<String>,
}

/// `certificateArchive`: a write-only PKCS#12 archive and its password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateArchiveSpec {
    /// Write-only. The PKCS#12 (.p12/.pfx) file in base64, or `*****` once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::ARCHIVE))]
    #[x_kube(validation = Rule::new("self == '*****'").message(masked_rule_message!("certificateArchive.archive")).reason(Reason::FieldValueForbidden))]
    pub archive: Option<String>,

    /// Write-only. The archive's password, or `*****` once sealed. Omit it for an archive
    /// without one. Sealed as `sealed.archivePassword`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::PASSWORD))]
    #[x_kube(validation = Rule::new("self == '*****'").message(masked_rule_message!("certificateArchive.password")).reason(Reason::FieldValueForbidden))]
    pub password: Option<String>,
}

/// `certificate`: a public certificate. Nothing here is secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The certificate (or chain) in PEM.
    #[schemars(length(min = 1, max = limits::PEM))]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN CERTIFICATE-----')").message("certificate.pem must hold a PEM certificate (-----BEGIN CERTIFICATE-----)"))]
    pub pem: String,
}

/// `file`: a visible name and write-only content.
#[derive(KubeSchema, Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FileSpec {
    /// The file name the monitor sees, e.g. `data.csv`.
    #[schemars(length(min = 1, max = limits::FILE_NAME))]
    #[x_kube(validation = Rule::new("!self.contains('/') && self != '.' && self != '..'").message("file.name must be a plain file name, without '/'"))]
    pub name: String,

    /// Write-only. The file's bytes in base64 (at most 128 KiB of base64, 96 KiB of file),
    /// or `*****` once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::FILE_CONTENT))]
    #[x_kube(validation = Rule::new("self == '*****'").message(masked_rule_message!("file.content")).reason(Reason::FieldValueForbidden))]
    pub content: Option<String>,
}

/// `oneTimePassword`: a write-only TOTP seed (RFC 6238) and its public settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OneTimePasswordSpec {
    /// Write-only. The shared TOTP seed in `encoding`, or `*****` once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::OTP_SECRET))]
    #[x_kube(validation = Rule::new("self == '*****'").message(masked_rule_message!("oneTimePassword.secret")).reason(Reason::FieldValueForbidden))]
    pub secret: Option<String>,

    /// How the seed is written.
    #[serde(default)]
    pub encoding: OtpEncoding,

    /// Digits in each code, 6 to 8.
    #[serde(default = "default_otp_digits")]
    #[x_kube(validation = Rule::new("self >= 6 && self <= 8").message("oneTimePassword.digits must be between 6 and 8"))]
    pub digits: u8,

    /// Seconds each code is valid, 1 to 120.
    #[serde(default = "default_otp_period")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 120").message("oneTimePassword.period must be between 1 and 120 seconds"))]
    pub period: u32,

    /// The HMAC hash.
    #[serde(default)]
    pub algorithm: OtpAlgorithm,
}

impl Default for OneTimePasswordSpec {
    fn default() -> Self {
        OneTimePasswordSpec {
            secret: None,
            encoding: OtpEncoding::default(),
            digits: default_otp_digits(),
            period: default_otp_period(),
            algorithm: OtpAlgorithm::default(),
        }
    }
}

fn default_otp_digits() -> u8 {
    6
}

fn default_otp_period() -> u32 {
    30
}

/// How a TOTP seed is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OtpEncoding {
    #[default]
    Base32,
    Hex,
}

/// The HMAC hash of a TOTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OtpAlgorithm {
    #[default]
    #[serde(rename = "SHA1")]
    Sha1,
    #[serde(rename = "SHA256")]
    Sha256,
    #[serde(rename = "SHA512")]
    Sha512,
}

/// A sealed value must look like what `monivault seal` prints, so a plaintext pasted here by
/// mistake is refused rather than stored (and committed to Git) as if it were sealed.
macro_rules! sealed_rule {
    ($field:literal) => {
        Rule::new("self.matches('^mv[0-9]+\\\\.s\\\\.[0-9]+\\\\.[A-Za-z0-9_-]+$')").message(concat!(
            "sealed.",
            $field,
            " must be a value printed by monivault seal (mv2.s.<key version>.<data>), never a plaintext"
        ))
    };
}

/// Sealed values: HPKE envelopes that only the operator can open, bound to the namespace,
/// the item name and the field. Safe to keep in Git.
///
/// `archivePassword` extends the design's key list (`password`, `value`, `archive`,
/// `content`, `secret`): a certificate archive has two write-only fields, and its password
/// must not share `sealed.password` with a credential set's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SealedFields {
    /// Sealed `credentialSet.password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SEALED_SHORT))]
    #[x_kube(validation = sealed_rule!("password"))]
    pub password: Option<String>,

    /// Sealed `secret.value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SEALED_VALUE))]
    #[x_kube(validation = sealed_rule!("value"))]
    pub value: Option<String>,

    /// Sealed `certificateArchive.archive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SEALED_ARCHIVE))]
    #[x_kube(validation = sealed_rule!("archive"))]
    pub archive: Option<String>,

    /// Sealed `certificateArchive.password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SEALED_SHORT))]
    #[x_kube(validation = sealed_rule!("archivePassword"))]
    pub archive_password: Option<String>,

    /// Sealed `file.content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SEALED_CONTENT))]
    #[x_kube(validation = sealed_rule!("content"))]
    pub content: Option<String>,

    /// Sealed `oneTimePassword.secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SEALED_SHORT))]
    #[x_kube(validation = sealed_rule!("secret"))]
    pub secret: Option<String>,
}

impl SealedFields {
    /// The sealed value of `field`, if any.
    pub fn get(&self, field: SecretField) -> Option<&str> {
        self.slot(field).as_deref()
    }

    /// Sets the sealed value of `field`.
    pub fn set(&mut self, field: SecretField, sealed: String) {
        *self.slot_mut(field) = Some(sealed);
    }

    fn slot(&self, field: SecretField) -> &Option<String> {
        match field {
            SecretField::Password => &self.password,
            SecretField::Value => &self.value,
            SecretField::Archive => &self.archive,
            SecretField::ArchivePassword => &self.archive_password,
            SecretField::Content => &self.content,
            SecretField::Secret => &self.secret,
        }
    }

    fn slot_mut(&mut self, field: SecretField) -> &mut Option<String> {
        match field {
            SecretField::Password => &mut self.password,
            SecretField::Value => &mut self.value,
            SecretField::Archive => &mut self.archive,
            SecretField::ArchivePassword => &mut self.archive_password,
            SecretField::Content => &mut self.content,
            SecretField::Secret => &mut self.secret,
        }
    }
}

impl VaultItemSpec {
    /// The write-only fields of this item's type.
    pub fn secret_fields(&self) -> &'static [SecretField] {
        self.item_type.secret_fields()
    }

    /// The plaintext-or-mask value of `field`, if its sub-object is present and sets it.
    pub fn write_only(&self, field: SecretField) -> Option<&str> {
        match field {
            SecretField::Password => self.credential_set.as_ref()?.password.as_deref(),
            SecretField::Value => self.secret.as_ref()?.value.as_deref(),
            SecretField::Archive => self.certificate_archive.as_ref()?.archive.as_deref(),
            SecretField::ArchivePassword => self.certificate_archive.as_ref()?.password.as_deref(),
            SecretField::Content => self.file.as_ref()?.content.as_deref(),
            SecretField::Secret => self.one_time_password.as_ref()?.secret.as_deref(),
        }
    }

    fn write_only_slot(&mut self, field: SecretField) -> Option<&mut Option<String>> {
        Some(match field {
            SecretField::Password => &mut self.credential_set.as_mut()?.password,
            SecretField::Value => &mut self.secret.as_mut()?.value,
            SecretField::Archive => &mut self.certificate_archive.as_mut()?.archive,
            SecretField::ArchivePassword => &mut self.certificate_archive.as_mut()?.password,
            SecretField::Content => &mut self.file.as_mut()?.content,
            SecretField::Secret => &mut self.one_time_password.as_mut()?.secret,
        })
    }

    /// The fields of this item's type that hold a plaintext (a value other than the mask):
    /// what the webhook must seal.
    pub fn plaintext_fields(&self) -> Vec<SecretField> {
        self.secret_fields()
            .iter()
            .copied()
            .filter(|&f| self.write_only(f).is_some_and(|v| v != SECRET_MASK))
            .collect()
    }

    /// Moves the plaintext of `field` out, leaving the mask `*****` in its place. `None` if
    /// the field is absent or already masked. The plaintext comes back zeroized-on-drop, so
    /// the spec no longer holds it.
    pub fn take_plaintext(&mut self, field: SecretField) -> Option<Zeroizing<String>> {
        let slot = self.write_only_slot(field)?;
        if slot.as_deref().is_none_or(|v| v == SECRET_MASK) {
            return None;
        }
        slot.replace(SECRET_MASK.to_owned()).map(Zeroizing::new)
    }

    /// The sealed value of `field`, if any.
    pub fn sealed_value(&self, field: SecretField) -> Option<&str> {
        self.sealed.as_ref()?.get(field)
    }

    /// Stores the sealed value of `field`, creating `spec.sealed` if needed.
    pub fn set_sealed(&mut self, field: SecretField, sealed: String) {
        self.sealed
            .get_or_insert_with(SealedFields::default)
            .set(field, sealed);
    }
}

/// Prints what a write-only field holds without printing it: absent, the mask, or `<set>`
/// for a plaintext.
struct Redacted<'a>(&'a Option<String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_deref() {
            None => f.write_str("None"),
            Some(SECRET_MASK) => f.write_str("\"*****\""),
            Some(_) => f.write_str("<set>"),
        }
    }
}

/// Prints a sealed value as `<sealed>`: it is safe, but long and of no use in a log.
struct SealedMarker<'a>(&'a Option<String>);

impl fmt::Debug for SealedMarker<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("None"),
            Some(_) => f.write_str("<sealed>"),
        }
    }
}

impl fmt::Debug for CredentialSetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSetSpec")
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .finish()
    }
}

impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec")
            .field("value", &Redacted(&self.value))
            .finish()
    }
}

impl fmt::Debug for CertificateArchiveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateArchiveSpec")
            .field("archive", &Redacted(&self.archive))
            .field("password", &Redacted(&self.password))
            .finish()
    }
}

impl fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSpec")
            .field("name", &self.name)
            .field("content", &Redacted(&self.content))
            .finish()
    }
}

impl fmt::Debug for OneTimePasswordSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePasswordSpec")
            .field("secret", &Redacted(&self.secret))
            .field("encoding", &self.encoding)
            .field("digits", &self.digits)
            .field("period", &self.period)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl fmt::Debug for SealedFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SealedFields");
        for field in SecretField::ALL {
            s.field(field.as_str(), &SealedMarker(self.slot(field)));
        }
        s.finish()
    }
}

/// What the operator reports about an item. Never a secret: `secret` is only ever the mask.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VaultItemStatus {
    /// `Ready` is `True` once every write-only value is ingested into the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// `*****` once a secret is stored; the `Secret` column shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,

    /// The version of the environment data key the stored secret is encrypted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,

    /// When a write-only value was last replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<Time>,

    /// The monitors (in this namespace) that reference the item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// For CertificateArchive (read from the archive at ingest) and Certificate items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,

    /// For File items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileInfo>,
}

/// Public facts about a certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Subject distinguished name, e.g. `CN=bot,O=Example`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Issuer distinguished name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Start of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
}

/// Public facts about a stored file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    /// The file name.
    pub name: String,
    /// Size of the decoded content, in bytes.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAINTEXT: &str = "hunter2-plaintext";

    fn spec_with(item_type: ItemType) -> VaultItemSpec {
        let some = || Some(PLAINTEXT.to_owned());
        VaultItemSpec {
            item_type,
            section: "checkout".into(),
            description: None,
            allowed_hosts: vec!["shop.example.com".into()],
            credential_set: Some(CredentialSetSpec {
                username: "bot".into(),
                password: some(),
            }),
            secret: Some(SecretSpec { value: some() }),
            certificate_archive: Some(CertificateArchiveSpec {
                archive: some(),
                password: some(),
            }),
            certificate: None,
            file: Some(FileSpec {
                name: "data.csv".into(),
                content: some(),
            }),
            one_time_password: Some(OneTimePasswordSpec {
                secret: some(),
                ..Default::default()
            }),
            sealed: Some(SealedFields {
                password: some(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn debug_never_prints_a_write_only_value() {
        let item = VaultItem::new("shop-login", spec_with(ItemType::CredentialSet));
        for text in [
            format!("{item:?}"),
            format!("{item:#?}"),
            format!("{:?}", item.spec),
        ] {
            assert!(!text.contains(PLAINTEXT), "{text}");
            assert!(text.contains("<set>"), "{text}");
            assert!(text.contains("bot"), "visible fields still print: {text}");
        }
    }

    #[test]
    fn debug_shows_the_mask_as_the_mask() {
        let spec = CredentialSetSpec {
            username: "bot".into(),
            password: Some(SECRET_MASK.into()),
        };
        assert!(format!("{spec:?}").contains("\"*****\""));
    }

    #[test]
    fn take_plaintext_leaves_the_mask() {
        let mut spec = spec_with(ItemType::CertificateArchive);
        assert_eq!(
            spec.plaintext_fields(),
            vec![SecretField::Archive, SecretField::ArchivePassword]
        );
        let taken = spec.take_plaintext(SecretField::ArchivePassword);
        assert_eq!(taken.as_deref().map(String::as_str), Some(PLAINTEXT));
        assert_eq!(
            spec.write_only(SecretField::ArchivePassword),
            Some(SECRET_MASK)
        );
        assert!(
            spec.take_plaintext(SecretField::ArchivePassword).is_none(),
            "already masked"
        );
        assert_eq!(spec.plaintext_fields(), vec![SecretField::Archive]);
    }

    #[test]
    fn set_sealed_creates_the_sealed_object() {
        let mut spec = spec_with(ItemType::Secret);
        spec.sealed = None;
        spec.set_sealed(SecretField::Value, "mv2.s.1.AAAA".into());
        assert_eq!(spec.sealed_value(SecretField::Value), Some("mv2.s.1.AAAA"));
        assert_eq!(spec.sealed_value(SecretField::Password), None);
    }

    #[test]
    fn secret_field_names_are_stable_and_round_trip() {
        let names: Vec<_> = SecretField::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "password",
                "value",
                "archive",
                "archivePassword",
                "content",
                "secret"
            ]
        );
        for field in SecretField::ALL {
            assert_eq!(field.as_str().parse::<SecretField>().ok(), Some(field));
            assert!(field.sealed_pointer().ends_with(field.as_str()));
            assert!(field.item_type().secret_fields().contains(&field));
        }
        assert!("username".parse::<SecretField>().is_err());
    }

    #[test]
    fn the_sealed_keys_are_the_secret_field_names() {
        let mut sealed = SealedFields::default();
        for field in SecretField::ALL {
            sealed.set(field, format!("mv2.s.1.{}", field.as_str()));
        }
        let json = serde_json::to_value(&sealed).unwrap();
        for field in SecretField::ALL {
            assert_eq!(json[field.as_str()], format!("mv2.s.1.{}", field.as_str()));
        }
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let otp = serde_json::json!({"algorithm": "MD5"});
        assert!(serde_json::from_value::<OneTimePasswordSpec>(otp).is_err());
        let otp = serde_json::json!({"encoding": "Base64"});
        assert!(serde_json::from_value::<OneTimePasswordSpec>(otp).is_err());
        assert!(serde_json::from_value::<ItemType>(serde_json::json!("Password")).is_err());
    }

    #[test]
    fn otp_defaults_match_the_design() {
        let otp: OneTimePasswordSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(otp.encoding, OtpEncoding::Base32);
        assert_eq!(otp.digits, 6);
        assert_eq!(otp.period, 30);
        assert_eq!(otp.algorithm, OtpAlgorithm::Sha1);
    }
}
