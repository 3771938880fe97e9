//! Admission's check of a `CertificateArchive` item's PKCS#12 archive: the walk of
//! [`crate::crypto::pkcs12::inspect`], on the archive a write brings, whether as plaintext
//! (about to be sealed) or sealed by hand (opened here for the walk). An archive over the
//! limits is refused with 422 and a message naming the limit, before it is stored, so it
//! never reaches the controller.
//!
//! What it must never do:
//! - derive a key: the walk runs none, so admission stays cheap whatever the archive holds.
//!   Bags hidden inside an encrypted safe are out of its sight; the controller's read counts
//!   them on the same limits, one archive at a time and within a deadline;
//! - refuse an archive for anything but its cost: one that is merely unreadable (damaged, a
//!   wrong password) is the controller's to report on the item, as before;
//! - return or log the archive or its password.

use crate::api::{ItemType, SECRET_MASK, SecretField, VaultItemSpec};
use crate::crypto::Plaintext;
use crate::crypto::SealBinding;
use crate::crypto::pkcs12;
use crate::store::{Keys, Store};

use super::dotted;
use super::seal_items::SealError;

/// Refuses the write if the archive it brings is over the limits. A sealed archive left as
/// it was (`old`) is not opened again: it was checked when it was written.
pub async fn refuse_costly_archive<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    name: &str,
    spec: &VaultItemSpec,
    old: Option<&VaultItemSpec>,
) -> Result<(), SealError> {
    const FIELD: SecretField = SecretField::Archive;
    if spec.item_type != ItemType::CertificateArchive {
        return Ok(());
    }
    let plaintext = spec.write_only(FIELD).filter(|v| *v != SECRET_MASK);
    let sealed = spec
        .sealed_value(FIELD)
        .filter(|sealed| old.and_then(|old| old.sealed_value(FIELD)) != Some(*sealed));
    let (path, archive) = if let Some(text) = plaintext {
        (dotted(FIELD.spec_pointer()), Plaintext::from(text))
    } else if let Some(sealed) = sealed {
        let ring = keys.keyring_for(namespace).await?;
        let root = keys.root_for(&ring).await?;
        let binding = SealBinding {
            namespace,
            section: &spec.section,
            item_type: spec.item_type.as_str(),
            item: name,
            field: FIELD.as_str(),
        };
        let opened = ring
            .open_sealed(&root, &binding, sealed)
            .map_err(|reason| SealError::SealedRefused {
                field: FIELD,
                namespace: namespace.to_owned(),
                section: spec.section.clone(),
                item: name.to_owned(),
                reason,
            })?;
        (format!("spec.sealed.{}", FIELD.as_str()), opened)
    } else {
        return Ok(());
    };
    match pkcs12::archive_der(archive.expose()).and_then(|der| pkcs12::inspect(&der)) {
        Err(refusal) if refusal.is_limit() => Err(SealError::InvalidSpec(format!(
            "{path} holds an archive monivault refuses to read: {refusal}"
        ))),
        _ => Ok(()),
    }
}
