//! Secrets are wiped before their memory is given back: a global allocator that looks at
//! every block as it is freed finds no plaintext and no root key in any of them.
//!
//! The allocator moves every reallocation (a fresh block, a copy, and the old block freed),
//! as the system allocator may do at any time, so a `Vec` shrunk into a `Box<[u8]>`, or
//! grown, leaves its old block behind where a test can see it.
//!
//! One test function: the watch is process-wide, and two tests at once would see each
//! other's blocks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use monivault::crypto::{ItemBinding, Keyring, Plaintext, RootKey, UnixMillis};
use monivault::store::{MemoryStore, RootKeySet, Store};
use zeroize::Zeroizing;

/// What no freed block may hold.
const PLAINTEXT: &[u8] = b"zeroize-sentinel-plaintext-7f3a91";
/// A root key that is easy to find: 32 bytes of 0xA5.
const ROOT_BYTE: u8 = 0xA5;

static WATCHING: AtomicBool = AtomicBool::new(false);
static FREED_WITH_PLAINTEXT: AtomicUsize = AtomicUsize::new(0);
static FREED_WITH_ROOT_KEY: AtomicUsize = AtomicUsize::new(0);

struct Watch;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// SAFETY: every call is forwarded to the system allocator with the same layout; blocks are
// zeroed when allocated, so reading one before it is freed reads initialised bytes.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCHING.load(Ordering::SeqCst) {
            // SAFETY: `ptr` is a live block of `layout.size()` initialised bytes.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if contains(block, PLAINTEXT) {
                FREED_WITH_PLAINTEXT.fetch_add(1, Ordering::SeqCst);
            }
            if contains(block, &[ROOT_BYTE; 32]) {
                FREED_WITH_ROOT_KEY.fetch_add(1, Ordering::SeqCst);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Always move, as `System` may: the old block is freed as it was.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Watch = Watch;

/// Runs `f` with the watch on and returns how many freed blocks held the plaintext and
/// how many the root key.
fn watched(f: impl FnOnce()) -> (usize, usize) {
    FREED_WITH_PLAINTEXT.store(0, Ordering::SeqCst);
    FREED_WITH_ROOT_KEY.store(0, Ordering::SeqCst);
    WATCHING.store(true, Ordering::SeqCst);
    f();
    WATCHING.store(false, Ordering::SeqCst);
    (
        FREED_WITH_PLAINTEXT.load(Ordering::SeqCst),
        FREED_WITH_ROOT_KEY.load(Ordering::SeqCst),
    )
}

#[test]
fn no_freed_block_holds_a_plaintext_or_a_root_key() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    // A buffer with room to spare, as a decryption or a read leaves it.
    let leaks = watched(|| {
        let mut bytes = Zeroizing::new(Vec::with_capacity(PLAINTEXT.len() * 2));
        bytes.extend_from_slice(PLAINTEXT);
        let plaintext = Plaintext::from_zeroizing(bytes);
        assert_eq!(plaintext.expose(), PLAINTEXT);
    });
    assert_eq!(leaks, (0, 0), "Plaintext::from_zeroizing left a copy");

    let leaks = watched(|| {
        let mut bytes = Vec::with_capacity(PLAINTEXT.len() + 7);
        bytes.extend_from_slice(PLAINTEXT);
        let plaintext = Plaintext::new(bytes);
        assert_eq!(plaintext.len(), PLAINTEXT.len());
    });
    assert_eq!(leaks, (0, 0), "Plaintext::new left a copy");

    // A stored item field, decrypted: AES-GCM opens into a buffer that still has room
    // for the tag.
    let root = RootKey::generate(1).expect("root");
    let mut keyring = Keyring::new(&root, UnixMillis::from_secs(0));
    keyring
        .ensure_environment(&root, "shop", UnixMillis::from_secs(0))
        .expect("env");
    let cipher = keyring.current_data_cipher(&root, "shop").expect("cipher");
    let binding = ItemBinding {
        namespace: "shop",
        item: "login",
        uid: "u",
        field: "password",
    };
    let text = cipher.encrypt(&binding, PLAINTEXT).expect("encrypt");
    let leaks = watched(|| {
        let opened = keyring.decrypt(&root, &binding, &text).expect("opens");
        assert_eq!(opened.expose(), PLAINTEXT);
    });
    assert_eq!(leaks, (0, 0), "decrypting left a copy of the plaintext");

    // The root key through the store: written, read back, used, dropped.
    let leaks = watched(|| {
        runtime.block_on(async {
            let store = MemoryStore::new();
            let key = RootKey::from_bytes(1, &[ROOT_BYTE; 32]).expect("key");
            let set = RootKeySet::new(key, UnixMillis::from_secs(0));
            store.put_root_keys(&set, None).await.expect("write");
            let read = store.root_keys().await.expect("read").expect("present");
            let root = read.value.current_key().expect("key");
            assert_eq!(root.version(), 1);
            drop((set, read, root));
            drop(store);
        });
    });
    assert_eq!(leaks.1, 0, "a root key was freed unwiped");
}
