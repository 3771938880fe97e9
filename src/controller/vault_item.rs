//! Ingest: a `VaultItem`'s sealed values, opened and re-encrypted under its environment's
//! current data key into the store. Status says whether that worked, and which monitors
//! use the item.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::certificate;
use super::{Context, Error, apply_status, now};
use crate::api::SECRET_MASK;
use crate::api::condition::{ConditionStatus, READY, new_condition, set_condition};
use crate::api::template::referenced_items;
use crate::api::vault_item::{
    CertificateInfo, FileInfo, ItemType, SecretField, VaultItem, VaultItemSpec, VaultItemStatus,
};
use crate::crypto::{ItemBinding, Keyring, Plaintext, RootKey, SealBinding};
use crate::store::{ItemKey, ItemRecord, Store};

pub const FINALIZER: &str = "monivault.io/store-record";

/// How often a Ready item is looked at again even if nothing changed: catches a record
/// removed behind the controller's back.
const RESYNC: Duration = Duration::from_secs(600);

pub async fn reconcile<S: Store>(
    item: Arc<VaultItem>,
    ctx: Arc<Context<S>>,
) -> Result<Action, Error> {
    let namespace = item
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<VaultItem> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, item, |event| async {
        match event {
            Finalizer::Apply(item) => apply(&item, &ctx, &namespace).await,
            Finalizer::Cleanup(item) => cleanup(&item, &ctx, &namespace).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// How long a reconcile waits for the monitor cache's first list before it errs (and is
/// retried with backoff).
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Why an item is not Ready. The messages name fields and reasons, never values.
struct NotReady {
    reason: &'static str,
    message: String,
}

/// What a successful ingest stored, and the public facts it read on the way.
struct Ingested {
    key_version: u32,
    file: Option<FileInfo>,
    certificate: Option<CertificateInfo>,
}

async fn apply<S: Store>(
    item: &VaultItem,
    ctx: &Context<S>,
    namespace: &str,
) -> Result<Action, Error> {
    let name = item.name_any();
    let uid = item.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let key = ItemKey {
        namespace: namespace.to_owned(),
        name: name.clone(),
    };
    let digest = source_digest(&uid, &item.spec);
    // usedBy is computed from the monitor cache, so wait for its first full list, but not
    // forever: a reconcile that never returns would also hold up shutdown.
    match tokio::time::timeout(CACHE_WAIT, ctx.monitors.wait_until_ready()).await {
        Ok(ready) => ready.map_err(|_| Error::CacheClosed)?,
        Err(_) => return Err(Error::CacheNotReady(CACHE_WAIT)),
    }
    let existing = ctx.keys.store().record(&key).await?;
    let previous = item.status.clone().unwrap_or_default();

    let mut status = VaultItemStatus {
        conditions: previous.conditions.clone(),
        used_by: used_by(ctx, namespace, &name),
        observed_generation: item.metadata.generation,
        certificate: previous.certificate.clone(),
        ..VaultItemStatus::default()
    };

    // An archive's facts are read only at ingest: one stored without them is read again.
    let has_facts =
        item.spec.item_type != ItemType::CertificateArchive || previous.certificate.is_some();
    // A record that no longer opens (altered in the store, or on a destroyed key) is
    // rebuilt from the sealed values in the spec, which stay the source of truth.
    let intact = match &existing {
        Some(record) if record.value.uid == uid && record.value.source_digest == digest => {
            let opens =
                record_opens(ctx, namespace, &name, &uid, &item.spec, &record.value).await?;
            if !opens {
                let message = "the stored record does not open; ingesting the sealed values again";
                tracing::warn!(%key, "{message}");
                publish_warning(ctx, item, "StoreRecordInvalid", message).await;
            }
            opens
        }
        _ => false,
    };
    let outcome = match &existing {
        Some(record) if intact && has_facts => {
            status.changed_at = previous.changed_at.clone();
            status.file = previous.file.clone();
            Ok(record.value.key_version)
        }
        _ => {
            let stored = ingest(
                item,
                ctx,
                namespace,
                &uid,
                &digest,
                existing.map(|r| r.resource_version),
            )
            .await?;
            stored.map(|stored| {
                status.changed_at = Some(now());
                status.file = stored.file;
                status.certificate = stored.certificate;
                stored.key_version
            })
        }
    };
    // A Certificate item's facts come from its public PEM: cheap, so read every time.
    let outcome = match &item.spec.certificate {
        Some(spec) if item.spec.item_type == ItemType::Certificate => {
            status.certificate = None;
            outcome.and_then(|version| match certificate::pem_info(&spec.pem) {
                Ok(info) => {
                    status.certificate = Some(info);
                    Ok(version)
                }
                Err(e) => Err(NotReady {
                    reason: "CertificateInvalid",
                    message: e.to_string(),
                }),
            })
        }
        _ => outcome,
    };

    let ready = match outcome {
        Ok(version) => {
            status.secret = Some(SECRET_MASK.to_owned());
            status.key_version = Some(version);
            new_condition(
                READY,
                ConditionStatus::True,
                "Stored",
                format!(
                    "every write-only value is encrypted in the store under data key version {version}"
                ),
                item.metadata.generation,
                now(),
            )
        }
        Err(not_ready) => {
            // What was stored before (if anything) is still there and still usable.
            status.secret = previous.secret.clone();
            status.key_version = previous.key_version;
            status.changed_at = previous.changed_at.clone();
            status.file = previous.file.clone();
            publish_warning(ctx, item, not_ready.reason, &not_ready.message).await;
            new_condition(
                READY,
                ConditionStatus::False,
                not_ready.reason,
                not_ready.message,
                item.metadata.generation,
                now(),
            )
        }
    };
    set_condition(&mut status.conditions, ready);

    if item.status.as_ref() != Some(&status) {
        let api: Api<VaultItem> = Api::namespaced(ctx.client.clone(), namespace);
        apply_status(&api, item, json!(status)).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Opens every sealed value and writes the record. `Ok(Err(..))` is a problem with the
/// item itself (it stays not Ready until changed); `Err(..)` is worth a retry.
async fn ingest<S: Store>(
    item: &VaultItem,
    ctx: &Context<S>,
    namespace: &str,
    uid: &str,
    digest: &str,
    expected: Option<String>,
) -> Result<Result<Ingested, NotReady>, Error> {
    let name = item.name_any();
    let keyring = ctx.keys.ensure_environment(namespace).await?;
    let root = ctx.keys.root_for(&keyring).await?;

    // Open every sealed value first.
    let mut opened: Vec<(SecretField, Plaintext)> = Vec::new();
    let mut file = None;
    for &field in item.spec.secret_fields() {
        let Some(sealed) = item.spec.sealed_value(field) else {
            if field.is_required() {
                return Ok(Err(NotReady {
                    reason: "SealedValueMissing",
                    message: format!("{} is not set", sealed_name(field)),
                }));
            }
            continue;
        };
        let binding = SealBinding {
            namespace,
            section: &item.spec.section,
            item_type: item.spec.item_type.as_str(),
            item: &name,
            field: field.as_str(),
        };
        let plaintext = match keyring.open_sealed(&root, &binding, sealed) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Err(NotReady {
                    reason: "SealedValueInvalid",
                    message: format!("{}: {e}", sealed_name(field)),
                }));
            }
        };
        if let Err(not_ready) = fits(field, plaintext.expose().len()) {
            return Ok(Err(not_ready));
        }
        if field == SecretField::Content {
            match base64::engine::general_purpose::STANDARD.decode(plaintext.expose()) {
                Ok(bytes) => {
                    let bytes = zeroize::Zeroizing::new(bytes);
                    file = item.spec.file.as_ref().map(|f| FileInfo {
                        name: f.name.clone(),
                        size: bytes.len() as u64,
                    });
                }
                Err(_) => {
                    return Ok(Err(NotReady {
                        reason: "ContentNotBase64",
                        message: "file.content is not base64".to_owned(),
                    }));
                }
            }
        }
        opened.push((field, plaintext));
    }

    // Then read the archive, which may take a while: before encrypting, so the data key
    // is chosen after the slow part, as late as possible before the write.
    let copy_of = |wanted: SecretField| {
        opened
            .iter()
            .find(|(field, _)| *field == wanted)
            .map(|(_, p)| Plaintext::new(p.expose().to_vec()))
    };
    let certificate = match copy_of(SecretField::Archive) {
        Some(archive) => {
            match certificate::read_archive(archive, copy_of(SecretField::ArchivePassword)).await {
                Ok(info) => Some(info),
                Err(certificate::CertificateError::ArchiveBusy) => {
                    return Err(Error::ArchiveBusy(certificate::ARCHIVE_DEADLINE));
                }
                Err(e) => {
                    return Ok(Err(NotReady {
                        reason: e.archive_reason(),
                        message: e.to_string(),
                    }));
                }
            }
        }
        None => None,
    };

    // The current data key now, read afresh.
    let keyring = ctx.keys.keyring_for(namespace).await?;
    let root = ctx.keys.root_for(&keyring).await?;
    let cipher = keyring.current_data_cipher(&root, namespace)?;
    let mut fields = BTreeMap::new();
    for (field, plaintext) in &opened {
        let item_binding = ItemBinding {
            namespace,
            item: &name,
            uid,
            field: field.as_str(),
        };
        fields.insert(
            field.as_str().to_owned(),
            cipher.encrypt(&item_binding, plaintext.expose())?,
        );
    }
    drop(opened);

    let record = ItemRecord {
        uid: uid.to_owned(),
        key_version: cipher.version(),
        fields,
        source_digest: digest.to_owned(),
        generation: item.metadata.generation,
    };
    let key = ItemKey {
        namespace: namespace.to_owned(),
        name: name.clone(),
    };
    ctx.keys
        .store()
        .put_record(&key, &record, expected.as_deref())
        .await?;
    // Counted for the 2^31 bound; the rotation check flushes it into the keyring.
    ctx.keys
        .count_encryptions(namespace, record.fields.len() as u64);
    // A retirement whose record listing was taken just before this write may have destroyed
    // the key it used: then the record no longer opens, and the next reconcile rebuilds it.
    let after = ctx.keys.keyring_for(namespace).await?;
    let still_there = after
        .environment(namespace)
        .is_ok_and(|env| env.data_keys.contains_key(&cipher.version()));
    if !still_there {
        return Err(Error::DataKeyRetired {
            version: cipher.version(),
        });
    }
    tracing::info!(%key, key_version = cipher.version(), "stored item");
    ctx.metrics.ingested();
    Ok(Ok(Ingested {
        key_version: cipher.version(),
        file,
        certificate,
    }))
}

async fn cleanup<S: Store>(
    item: &VaultItem,
    ctx: &Context<S>,
    namespace: &str,
) -> Result<Action, Error> {
    let key = ItemKey {
        namespace: namespace.to_owned(),
        name: item.name_any(),
    };
    // Only the record of this very item: a newer item of the same name may own it already.
    if let Some(record) = ctx.keys.store().record(&key).await?
        && Some(record.value.uid.as_str()) == item.uid().as_deref()
    {
        ctx.keys
            .store()
            .delete_record(&key, &record.resource_version)
            .await?;
        tracing::info!(%key, "deleted item record");
    }
    Ok(Action::await_change())
}

/// Whether the stored record is whole: see [`record_is_whole`].
async fn record_opens<S: Store>(
    ctx: &Context<S>,
    namespace: &str,
    name: &str,
    uid: &str,
    spec: &VaultItemSpec,
    record: &ItemRecord,
) -> Result<bool, Error> {
    let keyring = ctx.keys.keyring_for(namespace).await?;
    let root = ctx.keys.root_for(&keyring).await?;
    Ok(record_is_whole(
        &keyring, &root, namespace, name, uid, spec, record,
    ))
}

/// Whether the record holds exactly the secret fields the item has (its type's, less an
/// optional one it does not set), each opening under the key its envelope names. A record
/// with a field missing (none at all, say) would otherwise pass as whole while carrying
/// no secret.
fn record_is_whole(
    keyring: &Keyring,
    root: &RootKey,
    namespace: &str,
    name: &str,
    uid: &str,
    spec: &VaultItemSpec,
    record: &ItemRecord,
) -> bool {
    let expected: BTreeSet<&str> = spec
        .secret_fields()
        .iter()
        .filter(|field| field.is_required() || spec.sealed_value(**field).is_some())
        .map(|field| field.as_str())
        .collect();
    let stored: BTreeSet<&str> = record.fields.keys().map(String::as_str).collect();
    stored == expected
        && record.fields.iter().all(|(field, text)| {
            let binding = ItemBinding {
                namespace,
                item: name,
                uid,
                field,
            };
            keyring.decrypt(root, &binding, text).is_ok()
        })
}

/// Identifies the sealed inputs a record was made from, so an unchanged item is not
/// ingested again. Sealed values are ciphertext, so hashing them reveals nothing.
fn source_digest(uid: &str, spec: &VaultItemSpec) -> String {
    let mut hash = Sha256::new();
    hash.update(uid.as_bytes());
    for &field in spec.secret_fields() {
        hash.update([0u8]);
        hash.update(field.as_str().as_bytes());
        hash.update([0u8]);
        hash.update(spec.sealed_value(field).unwrap_or_default().as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Monitors in the namespace that reference the item, sorted.
fn used_by<S>(ctx: &Context<S>, namespace: &str, item: &str) -> Vec<String> {
    let mut names: Vec<String> = ctx
        .monitors
        .state()
        .iter()
        .filter(|m| m.namespace().as_deref() == Some(namespace))
        .filter(|m| referenced_items(&m.spec).is_ok_and(|items| items.contains(item)))
        .map(|m| m.name_any())
        .collect();
    names.sort();
    names
}

async fn publish_warning<S>(ctx: &Context<S>, item: &VaultItem, reason: &str, note: &str) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(note.to_owned()),
        action: "Ingest".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &item.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

fn sealed_name(field: SecretField) -> String {
    format!("sealed.{}", field.as_str())
}

/// Whether an opened value of `length` bytes is within its field's limit. The webhook
/// refuses a longer one, but a value sealed by another tool and admitted with the webhook
/// out of the way reaches the controller unchecked.
fn fits(field: SecretField, length: usize) -> Result<(), NotReady> {
    let limit = field.max_plaintext_len();
    if length <= limit {
        return Ok(());
    }
    Err(NotReady {
        reason: "ValueTooLarge",
        message: format!(
            "{}: the value is {length} bytes, and {} accepts at most {limit}",
            sealed_name(field),
            field
                .spec_pointer()
                .trim_start_matches("/spec/")
                .replace('/', ".")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::UnixMillis;

    #[test]
    fn an_opened_value_over_its_fields_limit_is_not_stored() {
        use crate::api::vault_item::limits;
        assert!(fits(SecretField::Content, limits::FILE_CONTENT).is_ok());
        let refused = fits(SecretField::Content, limits::FILE_CONTENT + 1).err();
        let refused = refused.expect("over the limit");
        assert_eq!(refused.reason, "ValueTooLarge");
        assert_eq!(
            refused.message,
            "sealed.content: the value is 131073 bytes, and file.content accepts at most 131072"
        );
        for field in SecretField::ALL {
            let limit = field.max_plaintext_len();
            assert!(fits(field, limit).is_ok(), "{field}");
            assert!(fits(field, limit + 1).is_err(), "{field}");
        }
    }

    #[test]
    fn digest_changes_with_any_sealed_value_or_uid() {
        let spec: VaultItemSpec = serde_json::from_value(json!({
            "type": "Secret", "section": "s", "secret": {"value": "*****"},
            "sealed": {"value": "mv2.s.1.AAAA"}
        }))
        .expect("spec");
        let mut other = spec.clone();
        other.set_sealed(SecretField::Value, "mv2.s.1.AAAB".into());
        let a = source_digest("uid-1", &spec);
        assert_eq!(a, source_digest("uid-1", &spec));
        assert_ne!(a, source_digest("uid-2", &spec));
        assert_ne!(a, source_digest("uid-1", &other));
    }

    /// A keyring for `shop`, and a record of item `login` holding `fields`, each encrypted
    /// under the current data key.
    fn stored(fields: &[&str]) -> (Keyring, RootKey, ItemRecord) {
        let root = RootKey::generate(1).expect("root");
        let mut keyring = Keyring::new(&root, UnixMillis::from_secs(0));
        keyring
            .ensure_environment(&root, "shop", UnixMillis::from_secs(0))
            .expect("env");
        let cipher = keyring.current_data_cipher(&root, "shop").expect("cipher");
        let fields = fields
            .iter()
            .map(|field| {
                let binding = ItemBinding {
                    namespace: "shop",
                    item: "login",
                    uid: "uid-1",
                    field,
                };
                let text = cipher.encrypt(&binding, b"pw").expect("encrypt");
                ((*field).to_owned(), text)
            })
            .collect();
        let record = ItemRecord {
            uid: "uid-1".into(),
            key_version: 1,
            fields,
            source_digest: String::new(),
            generation: None,
        };
        (keyring, root, record)
    }

    fn spec(value: serde_json::Value) -> VaultItemSpec {
        serde_json::from_value(value).expect("spec")
    }

    #[test]
    fn a_record_is_whole_only_with_exactly_the_fields_the_item_has() {
        let credential_set = spec(json!({
            "type": "CredentialSet", "section": "s",
            "credentialSet": {"username": "bot", "password": "*****"},
            "sealed": {"password": "mv1.s.1.AAAA"}
        }));
        let whole = |fields: &[&str], spec: &VaultItemSpec| {
            let (keyring, root, record) = stored(fields);
            record_is_whole(&keyring, &root, "shop", "login", "uid-1", spec, &record)
        };
        assert!(whole(&["password"], &credential_set));
        assert!(
            !whole(&[], &credential_set),
            "a record with no fields carries no password"
        );
        assert!(
            !whole(&["password", "value"], &credential_set),
            "a field the item does not have"
        );
        assert!(!whole(&["value"], &credential_set), "another field");

        // The archive password is optional: required only when it is set.
        let archive_only = spec(json!({
            "type": "CertificateArchive", "section": "s",
            "certificateArchive": {"archive": "*****"},
            "sealed": {"archive": "mv1.s.1.AAAA"}
        }));
        assert!(whole(&["archive"], &archive_only));
        assert!(!whole(&["archive", "archivePassword"], &archive_only));
        let with_password = spec(json!({
            "type": "CertificateArchive", "section": "s",
            "certificateArchive": {"archive": "*****", "password": "*****"},
            "sealed": {"archive": "mv1.s.1.AAAA", "archivePassword": "mv1.s.1.AAAB"}
        }));
        assert!(whole(&["archive", "archivePassword"], &with_password));
        assert!(!whole(&["archive"], &with_password));

        // A field that does not open is not whole either.
        let (keyring, root, record) = stored(&["password"]);
        assert!(!record_is_whole(
            &keyring,
            &root,
            "shop",
            "login",
            "uid-2",
            &credential_set,
            &record
        ));
    }
}
