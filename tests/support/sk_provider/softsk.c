/*
 * softsk: a software FIDO2 security key behind OpenSSH's SecurityKeyProvider
 * (sk-api) interface, for tests.  Ed25519 and ECDSA P-256 via libcrypto.
 *
 * The private key travels inside the key handle in the clear: this is a test
 * device, and a stateless handle is what lets ssh-keygen enroll in one process
 * and ssh sign in another.  Behaviour at sign time (flags, counter, refusal,
 * PIN) comes from environment variables or from files in a state directory
 * whose path is baked into the key handle at enrollment (env wins over files):
 *
 *   BASTION_SOFTSK_STATE_DIR     state dir; read at enrollment (baked) and at sign time
 *   BASTION_SOFTSK_FLAGS         hex flags for the next signatures, e.g. 0x05  (file: flags)
 *   BASTION_SOFTSK_COUNTER       explicit decimal counter, state untouched      (file: -)
 *   BASTION_SOFTSK_COUNTER_FILE  last counter used; each signature writes +1    (file: counter)
 *   BASTION_SOFTSK_REFUSE        non-empty and not "0": fail like a timeout     (file: refuse)
 *   BASTION_SOFTSK_PIN           the device PIN; when set, verify-required keys (file: pin)
 *                                need it and a wrong one is refused
 *   BASTION_SOFTSK_LOG           append one line per operation              (file: log)
 *
 * Default flags are what a real key reports: UP if the key requires touch,
 * UV if a (correct) PIN came with the request.  Without any counter source the
 * counter is the Unix time, which never goes backwards between test runs.
 */

#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

/* --- the sk-api contract (OpenSSH sk-api.h, API 0x000a0000 in OpenSSH 9.x) --- */

#ifndef SOFTSK_API_VERSION
#define SOFTSK_API_VERSION 0x000a0000
#endif

#define SSH_SK_USER_PRESENCE_REQD 0x01
#define SSH_SK_USER_VERIFICATION_REQD 0x04
#define SSH_SK_RESIDENT_KEY 0x20

#define SSH_SK_ECDSA 0x00
#define SSH_SK_ED25519 0x01

#define SSH_SK_ERR_GENERAL -1
#define SSH_SK_ERR_UNSUPPORTED -2
#define SSH_SK_ERR_PIN_REQUIRED -3
#define SSH_SK_ERR_DEVICE_NOT_FOUND -4

struct sk_enroll_response {
#if SOFTSK_API_VERSION >= 0x000a0000
	uint8_t flags; /* added in API 10: the key's flags as the device settled them */
#endif
	uint8_t *public_key;
	size_t public_key_len;
	uint8_t *key_handle;
	size_t key_handle_len;
	uint8_t *signature;
	size_t signature_len;
	uint8_t *attestation_cert;
	size_t attestation_cert_len;
	uint8_t *authdata;
	size_t authdata_len;
};

struct sk_sign_response {
	uint8_t flags;
	uint32_t counter;
	uint8_t *sig_r;
	size_t sig_r_len;
	uint8_t *sig_s;
	size_t sig_s_len;
};

struct sk_resident_key {
	uint32_t alg;
	size_t slot;
	char *application;
	struct sk_enroll_response key;
	uint8_t flags;
	uint8_t *user_id;
	size_t user_id_len;
};

struct sk_option {
	char *name;
	char *value;
	uint8_t required;
};

#define EXPORT __attribute__((visibility("default")))

EXPORT uint32_t sk_api_version(void);
EXPORT int sk_enroll(uint32_t alg, const uint8_t *challenge, size_t challenge_len,
    const char *application, uint8_t flags, const char *pin,
    struct sk_option **options, struct sk_enroll_response **enroll_response);
EXPORT int sk_sign(uint32_t alg, const uint8_t *data, size_t data_len,
    const char *application, const uint8_t *key_handle, size_t key_handle_len,
    uint8_t flags, const char *pin, struct sk_option **options,
    struct sk_sign_response **sign_response);
EXPORT int sk_load_resident_keys(const char *pin, struct sk_option **options,
    struct sk_resident_key ***rks, size_t *nrks);

/* --- key handle: "BSSK" v alg flags sha256(app)[32] priv[32] publen pub statelen(be16) state --- */

#define KH_MAGIC "BSSK"
#define KH_VERSION 1
#define KH_FIXED (4 + 1 + 1 + 1 + 32 + 32 + 1)
#define MAX_PUB 65
#define STATE_MAX 1024

struct softkey {
	uint32_t alg;
	uint8_t flags;
	uint8_t app_hash[32];
	uint8_t priv[32];
	uint8_t pub[MAX_PUB];
	size_t pub_len;
	char state[STATE_MAX];
};

static void
sha256(const void *data, size_t len, uint8_t out[32])
{
	SHA256(data, len, out);
}

static size_t
encode_handle(const struct softkey *k, uint8_t *out, size_t cap)
{
	size_t state_len = strlen(k->state), n = KH_FIXED + k->pub_len + 2 + state_len;
	uint8_t *p = out;

	if (n > cap)
		return 0;
	memcpy(p, KH_MAGIC, 4);
	p += 4;
	*p++ = KH_VERSION;
	*p++ = (uint8_t)k->alg;
	*p++ = k->flags;
	memcpy(p, k->app_hash, 32);
	p += 32;
	memcpy(p, k->priv, 32);
	p += 32;
	*p++ = (uint8_t)k->pub_len;
	memcpy(p, k->pub, k->pub_len);
	p += k->pub_len;
	*p++ = (uint8_t)(state_len >> 8);
	*p++ = (uint8_t)state_len;
	memcpy(p, k->state, state_len);
	return n;
}

static int
decode_handle(const uint8_t *kh, size_t len, struct softkey *k)
{
	size_t state_len;
	const uint8_t *p = kh;

	memset(k, 0, sizeof(*k));
	if (len < KH_FIXED + 2 || memcmp(p, KH_MAGIC, 4) != 0 || p[4] != KH_VERSION)
		return -1;
	p += 5;
	k->alg = *p++;
	k->flags = *p++;
	memcpy(k->app_hash, p, 32);
	p += 32;
	memcpy(k->priv, p, 32);
	p += 32;
	k->pub_len = *p++;
	if (k->pub_len > MAX_PUB || len < KH_FIXED + k->pub_len + 2)
		return -1;
	memcpy(k->pub, p, k->pub_len);
	p += k->pub_len;
	state_len = ((size_t)p[0] << 8) | p[1];
	p += 2;
	if (state_len >= STATE_MAX || len != KH_FIXED + k->pub_len + 2 + state_len)
		return -1;
	memcpy(k->state, p, state_len);
	k->state[state_len] = '\0';
	return 0;
}

/* --- state: env first, then the state dir --- */

static const char *
state_dir(const struct softkey *k)
{
	const char *env = getenv("BASTION_SOFTSK_STATE_DIR");

	if (env != NULL && *env != '\0')
		return env;
	return (k != NULL && k->state[0] != '\0') ? k->state : NULL;
}

static int
state_path(const struct softkey *k, const char *name, char *out, size_t cap)
{
	const char *dir = state_dir(k);
	int n;

	if (dir == NULL)
		return -1;
	n = snprintf(out, cap, "%s/%s", dir, name);
	return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

/* One setting: the env var if set, else the first line of the state file; 0 if found. */
static int
setting(const struct softkey *k, const char *env, const char *file, char *out, size_t cap)
{
	const char *v = getenv(env);
	char path[STATE_MAX + 64];
	FILE *f;

	if (v != NULL && *v != '\0') {
		snprintf(out, cap, "%s", v);
		return 0;
	}
	if (file == NULL || state_path(k, file, path, sizeof(path)) != 0 ||
	    (f = fopen(path, "r")) == NULL)
		return -1;
	if (fgets(out, (int)cap, f) == NULL)
		out[0] = '\0';
	fclose(f);
	out[strcspn(out, "\r\n")] = '\0';
	return 0;
}

static void
logline(const struct softkey *k, const char *fmt, ...)
{
	char path[STATE_MAX + 64];
	const char *env = getenv("BASTION_SOFTSK_LOG");
	va_list ap;
	FILE *f;

	if (env != NULL && *env != '\0')
		snprintf(path, sizeof(path), "%s", env);
	else if (state_path(k, "log", path, sizeof(path)) != 0)
		return;
	if ((f = fopen(path, "a")) == NULL)
		return;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fclose(f);
}

static int
refused(const struct softkey *k)
{
	char v[64];

	if (setting(k, "BASTION_SOFTSK_REFUSE", "refuse", v, sizeof(v)) != 0)
		return 0;
	/* The file's mere existence refuses; the env var needs a true-ish value. */
	return strcmp(v, "0") != 0;
}

/* A configured PIN must match; with none configured any PIN "verifies". 1 = verified. */
static int
pin_verifies(const struct softkey *k, const char *pin)
{
	char want[256];

	if (pin == NULL || *pin == '\0')
		return 0;
	if (setting(k, "BASTION_SOFTSK_PIN", "pin", want, sizeof(want)) != 0)
		return 1;
	return strcmp(want, pin) == 0 ? 1 : -1;
}

/* The next counter from a file holding the last one used, under flock so parallel signers stay monotonic. */
static int
bump_counter_file(const char *path, uint32_t *out)
{
	char buf[32];
	ssize_t n;
	unsigned long long last;
	int fd = open(path, O_RDWR | O_CREAT, 0600);

	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX) != 0 || (n = pread(fd, buf, sizeof(buf) - 1, 0)) < 0) {
		close(fd);
		return -1;
	}
	buf[n] = '\0';
	last = strtoull(buf, NULL, 10);
	*out = (uint32_t)(last + 1);
	n = snprintf(buf, sizeof(buf), "%u\n", *out);
	if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		close(fd);
		return -1;
	}
	close(fd); /* releases the lock */
	return 0;
}

static int
next_counter(const struct softkey *k, uint32_t *out, const char **source)
{
	char v[STATE_MAX + 64];

	if (setting(k, "BASTION_SOFTSK_COUNTER", NULL, v, sizeof(v)) == 0) {
		*source = "env";
		*out = (uint32_t)strtoul(v, NULL, 0);
		return 0;
	}
	if (setting(k, "BASTION_SOFTSK_COUNTER_FILE", NULL, v, sizeof(v)) == 0 ||
	    state_path(k, "counter", v, sizeof(v)) == 0) {
		*source = "file";
		return bump_counter_file(v, out);
	}
	*source = "time";
	*out = (uint32_t)time(NULL);
	return 0;
}

/* --- crypto --- */

static EVP_PKEY *
load_key(const struct softkey *k)
{
	EVP_PKEY *pk = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	BIGNUM *d = NULL;

	if (k->alg == SSH_SK_ED25519)
		return EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, k->priv, 32);
	if ((bld = OSSL_PARAM_BLD_new()) == NULL || (d = BN_bin2bn(k->priv, 32, NULL)) == NULL ||
	    !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d) ||
	    !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, k->pub, k->pub_len) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    (ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL ||
	    EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_KEYPAIR, params) != 1)
		pk = NULL;
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_clear_free(d);
	return pk;
}

static int
generate_key(struct softkey *k)
{
	EVP_PKEY *pk = NULL;
	BIGNUM *d = NULL;
	size_t len = 32;
	int ok = 0;

	k->pub_len = sizeof(k->pub); /* in: buffer size, out: key length */
	if (k->alg == SSH_SK_ED25519) {
		if ((pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")) != NULL &&
		    EVP_PKEY_get_raw_private_key(pk, k->priv, &len) == 1 && len == 32 &&
		    EVP_PKEY_get_raw_public_key(pk, k->pub, &k->pub_len) == 1)
			ok = 1;
	} else {
		/* P-256 public points come out uncompressed (0x04 || X || Y), which is what OpenSSH stores. */
		if ((pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) != NULL &&
		    EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_PRIV_KEY, &d) == 1 &&
		    BN_bn2binpad(d, k->priv, 32) == 32 &&
		    EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, k->pub,
		    sizeof(k->pub), &k->pub_len) == 1 && k->pub_len == 65 && k->pub[0] == 0x04)
			ok = 1;
	}
	BN_clear_free(d);
	EVP_PKEY_free(pk);
	return ok ? 0 : -1;
}

/* Sign authdata || clientDataHash as a FIDO2 device would: Ed25519 over the bytes, ES256 over their SHA-256. */
static int
sign_message(const struct softkey *k, const uint8_t *msg, size_t msg_len, struct sk_sign_response *resp)
{
	EVP_PKEY *pk = load_key(k);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t der[160];
	size_t der_len = sizeof(der);
	const unsigned char *dp = der;
	ECDSA_SIG *esig = NULL;
	const BIGNUM *r, *s;
	int ret = -1;

	if (pk == NULL || md == NULL ||
	    EVP_DigestSignInit(md, NULL, k->alg == SSH_SK_ED25519 ? NULL : EVP_sha256(), NULL, pk) != 1 ||
	    EVP_DigestSign(md, der, &der_len, msg, msg_len) != 1)
		goto out;
	if (k->alg == SSH_SK_ED25519) {
		if ((resp->sig_r = malloc(der_len)) == NULL)
			goto out;
		memcpy(resp->sig_r, der, der_len);
		resp->sig_r_len = der_len;
		ret = 0;
		goto out;
	}
	/* sk-api wants r and s as unsigned big-endian integers; OpenSSH makes the mpints. */
	if ((esig = d2i_ECDSA_SIG(NULL, &dp, (long)der_len)) == NULL)
		goto out;
	ECDSA_SIG_get0(esig, &r, &s);
	resp->sig_r_len = (size_t)BN_num_bytes(r);
	resp->sig_s_len = (size_t)BN_num_bytes(s);
	if ((resp->sig_r = calloc(1, resp->sig_r_len + 1)) == NULL ||
	    (resp->sig_s = calloc(1, resp->sig_s_len + 1)) == NULL)
		goto out;
	BN_bn2bin(r, resp->sig_r);
	BN_bn2bin(s, resp->sig_s);
	ret = 0;
 out:
	ECDSA_SIG_free(esig);
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(pk);
	return ret;
}

/* --- resident keys: one file per credential under <state>/resident --- */

static int
put16(FILE *f, const void *data, size_t len)
{
	uint8_t hdr[2] = { (uint8_t)(len >> 8), (uint8_t)len };

	return (len > 0xffff || fwrite(hdr, 1, 2, f) != 2 ||
	    (len > 0 && fwrite(data, 1, len, f) != len)) ? -1 : 0;
}

static uint8_t *
get16(FILE *f, size_t *len)
{
	uint8_t hdr[2], *buf;

	if (fread(hdr, 1, 2, f) != 2)
		return NULL;
	*len = ((size_t)hdr[0] << 8) | hdr[1];
	if ((buf = calloc(1, *len + 1)) == NULL)
		return NULL;
	if (*len > 0 && fread(buf, 1, *len, f) != *len) {
		free(buf);
		return NULL;
	}
	return buf;
}

static int
store_resident(const struct softkey *k, const char *application, const uint8_t *user,
    size_t user_len, const uint8_t *kh, size_t kh_len)
{
	char dir[STATE_MAX + 64], path[STATE_MAX + 128];
	uint8_t id[8];
	FILE *f;
	int ret;

	if (state_path(k, "resident", dir, sizeof(dir)) != 0)
		return -1;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -1;
	RAND_bytes(id, sizeof(id));
	snprintf(path, sizeof(path), "%s/%02x%02x%02x%02x%02x%02x%02x%02x.rk", dir,
	    id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]);
	if ((f = fopen(path, "wb")) == NULL)
		return -1;
	ret = (put16(f, application, strlen(application)) == 0 && put16(f, user, user_len) == 0 &&
	    put16(f, kh, kh_len) == 0) ? 0 : -1;
	return (fclose(f) == 0) ? ret : -1;
}

static void
free_resident(struct sk_resident_key *rk)
{
	if (rk == NULL)
		return;
	free(rk->application);
	free(rk->user_id);
	free(rk->key.key_handle);
	free(rk->key.public_key);
	free(rk);
}

static struct sk_resident_key *
load_resident(const char *path)
{
	struct sk_resident_key *rk = calloc(1, sizeof(*rk));
	struct softkey k;
	size_t app_len;
	FILE *f = fopen(path, "rb");

	if (rk == NULL || f == NULL)
		goto fail;
	if ((rk->application = (char *)get16(f, &app_len)) == NULL ||
	    (rk->user_id = get16(f, &rk->user_id_len)) == NULL ||
	    (rk->key.key_handle = get16(f, &rk->key.key_handle_len)) == NULL ||
	    decode_handle(rk->key.key_handle, rk->key.key_handle_len, &k) != 0 ||
	    (rk->key.public_key = malloc(k.pub_len)) == NULL)
		goto fail;
	fclose(f);
	memcpy(rk->key.public_key, k.pub, k.pub_len);
	rk->key.public_key_len = k.pub_len;
	rk->alg = k.alg;
	rk->flags = k.flags;
#if SOFTSK_API_VERSION >= 0x000a0000
	rk->key.flags = k.flags;
#endif
	OPENSSL_cleanse(&k, sizeof(k));
	return rk;
 fail:
	if (f != NULL)
		fclose(f);
	OPENSSL_cleanse(&k, sizeof(k));
	free_resident(rk);
	return NULL;
}

/* --- the sk-api entry points --- */

uint32_t
sk_api_version(void)
{
	return SOFTSK_API_VERSION;
}

static const char *
option(struct sk_option **options, const char *name)
{
	for (size_t i = 0; options != NULL && options[i] != NULL; i++)
		if (strcmp(options[i]->name, name) == 0)
			return options[i]->value;
	return NULL;
}

static int
unsupported_required_option(struct sk_option **options)
{
	for (size_t i = 0; options != NULL && options[i] != NULL; i++)
		if (options[i]->required && strcmp(options[i]->name, "device") != 0 &&
		    strcmp(options[i]->name, "user") != 0)
			return 1;
	return 0;
}

int
sk_enroll(uint32_t alg, const uint8_t *challenge, size_t challenge_len,
    const char *application, uint8_t flags, const char *pin,
    struct sk_option **options, struct sk_enroll_response **enroll_response)
{
	struct sk_enroll_response *resp = NULL;
	struct softkey k;
	uint8_t kh[KH_FIXED + MAX_PUB + 2 + STATE_MAX];
	uint8_t user_id[32] = { 0 }; /* what OpenSSH itself uses when no user is given */
	const char *dir, *user;
	size_t kh_len, user_len = sizeof(user_id);
	int ret = SSH_SK_ERR_GENERAL;

	(void)challenge;
	(void)challenge_len;
	if (enroll_response == NULL || application == NULL)
		return SSH_SK_ERR_GENERAL;
	*enroll_response = NULL;
	if (alg != SSH_SK_ECDSA && alg != SSH_SK_ED25519)
		return SSH_SK_ERR_UNSUPPORTED;
	if (unsupported_required_option(options))
		return SSH_SK_ERR_UNSUPPORTED;
	memset(&k, 0, sizeof(k));
	k.alg = alg;
	k.flags = flags;
	if ((dir = state_dir(NULL)) != NULL)
		snprintf(k.state, sizeof(k.state), "%s", dir);
	if (refused(&k)) {
		logline(&k, "enroll refused application=%s", application);
		return SSH_SK_ERR_GENERAL;
	}
	if ((flags & SSH_SK_USER_VERIFICATION_REQD) && pin_verifies(&k, pin) < 0)
		return SSH_SK_ERR_PIN_REQUIRED;
	if ((flags & SSH_SK_RESIDENT_KEY) && k.state[0] == '\0')
		return SSH_SK_ERR_UNSUPPORTED; /* nowhere to keep it: set BASTION_SOFTSK_STATE_DIR */
	sha256(application, strlen(application), k.app_hash);
	if (generate_key(&k) != 0 || (kh_len = encode_handle(&k, kh, sizeof(kh))) == 0)
		goto out;
	if ((user = option(options, "user")) != NULL) {
		user_len = strlen(user) < sizeof(user_id) ? strlen(user) : sizeof(user_id);
		memcpy(user_id, user, user_len);
	}
	if ((flags & SSH_SK_RESIDENT_KEY) &&
	    store_resident(&k, application, user_id, user_len, kh, kh_len) != 0)
		goto out;
	if ((resp = calloc(1, sizeof(*resp))) == NULL ||
	    (resp->public_key = malloc(k.pub_len)) == NULL ||
	    (resp->key_handle = malloc(kh_len)) == NULL)
		goto out;
#if SOFTSK_API_VERSION >= 0x000a0000
	resp->flags = flags;
#endif
	memcpy(resp->public_key, k.pub, k.pub_len);
	resp->public_key_len = k.pub_len;
	memcpy(resp->key_handle, kh, kh_len);
	resp->key_handle_len = kh_len;
	/* No attestation: signature, certificate and authdata stay empty, which OpenSSH accepts. */
	logline(&k, "enroll alg=%s application=%s flags=0x%02x pin=%s resident=%d",
	    alg == SSH_SK_ED25519 ? "ed25519" : "ecdsa", application, flags,
	    pin != NULL && *pin != '\0' ? "yes" : "no", (flags & SSH_SK_RESIDENT_KEY) != 0);
	*enroll_response = resp;
	resp = NULL;
	ret = 0;
 out:
	if (resp != NULL) {
		free(resp->public_key);
		free(resp->key_handle);
		free(resp);
	}
	OPENSSL_cleanse(&k, sizeof(k));
	OPENSSL_cleanse(kh, sizeof(kh));
	return ret;
}

int
sk_sign(uint32_t alg, const uint8_t *data, size_t data_len,
    const char *application, const uint8_t *key_handle, size_t key_handle_len,
    uint8_t flags, const char *pin, struct sk_option **options,
    struct sk_sign_response **sign_response)
{
	struct sk_sign_response *resp = NULL;
	struct softkey k;
	uint8_t app_hash[32], msg[32 + 1 + 4 + 32];
	char v[64];
	const char *counter_source;
	int verified, ret = SSH_SK_ERR_GENERAL;

	(void)options;
	if (sign_response == NULL || application == NULL || key_handle == NULL)
		return SSH_SK_ERR_GENERAL;
	*sign_response = NULL;
	sha256(application, strlen(application), app_hash);
	/* A handle this device did not make, or made for another application: "not on this key". */
	if (decode_handle(key_handle, key_handle_len, &k) != 0 || k.alg != alg ||
	    memcmp(k.app_hash, app_hash, 32) != 0)
		return SSH_SK_ERR_DEVICE_NOT_FOUND;
	if (refused(&k)) {
		logline(&k, "sign refused application=%s", application);
		ret = SSH_SK_ERR_GENERAL;
		goto out;
	}
	verified = pin_verifies(&k, pin);
	if ((flags & SSH_SK_USER_VERIFICATION_REQD) && verified != 1) {
		logline(&k, "sign pin-required application=%s", application);
		ret = SSH_SK_ERR_PIN_REQUIRED; /* ssh then asks for the PIN and retries */
		goto out;
	}
	if ((resp = calloc(1, sizeof(*resp))) == NULL)
		goto out;
	if (setting(&k, "BASTION_SOFTSK_FLAGS", "flags", v, sizeof(v)) == 0)
		resp->flags = (uint8_t)strtoul(v, NULL, 16);
	else
		resp->flags = (uint8_t)((flags & SSH_SK_USER_PRESENCE_REQD) | (verified == 1 ? 0x04 : 0));
	if (next_counter(&k, &resp->counter, &counter_source) != 0)
		goto out;

	/* authenticatorData = sha256(application) || flags || counter(be32); then the clientDataHash. */
	memcpy(msg, app_hash, 32);
	msg[32] = resp->flags;
	msg[33] = (uint8_t)(resp->counter >> 24);
	msg[34] = (uint8_t)(resp->counter >> 16);
	msg[35] = (uint8_t)(resp->counter >> 8);
	msg[36] = (uint8_t)resp->counter;
	sha256(data, data_len, msg + 37);
	if (sign_message(&k, msg, sizeof(msg), resp) != 0)
		goto out;
	logline(&k, "sign alg=%s application=%s key_flags=0x%02x flags=0x%02x counter=%u counter_source=%s pin=%s",
	    alg == SSH_SK_ED25519 ? "ed25519" : "ecdsa", application, flags, resp->flags, resp->counter,
	    counter_source, pin != NULL && *pin != '\0' ? "yes" : "no");
	*sign_response = resp;
	resp = NULL;
	ret = 0;
 out:
	if (resp != NULL) {
		free(resp->sig_r);
		free(resp->sig_s);
		free(resp);
	}
	OPENSSL_cleanse(&k, sizeof(k));
	return ret;
}

int
sk_load_resident_keys(const char *pin, struct sk_option **options,
    struct sk_resident_key ***rksp, size_t *nrksp)
{
	char dir[STATE_MAX + 64], path[STATE_MAX + 384], want[256];
	struct sk_resident_key **rks = NULL, **grown, *rk;
	size_t nrks = 0;
	struct dirent *de;
	DIR *d;

	(void)options;
	if (rksp == NULL || nrksp == NULL)
		return SSH_SK_ERR_GENERAL;
	*rksp = NULL;
	*nrksp = 0;
	/* Listing credentials needs the PIN on a real key; here only when one is configured. */
	if (setting(NULL, "BASTION_SOFTSK_PIN", "pin", want, sizeof(want)) == 0 &&
	    (pin == NULL || strcmp(pin, want) != 0))
		return SSH_SK_ERR_PIN_REQUIRED;
	if (state_path(NULL, "resident", dir, sizeof(dir)) != 0 || (d = opendir(dir)) == NULL)
		return 0; /* no state, no resident keys */
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);

		if (n < 4 || strcmp(de->d_name + n - 3, ".rk") != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if ((rk = load_resident(path)) == NULL)
			continue;
		if ((grown = realloc(rks, (nrks + 1) * sizeof(*rks))) == NULL) {
			free_resident(rk);
			break;
		}
		rks = grown;
		rk->slot = nrks;
		rks[nrks++] = rk;
	}
	closedir(d);
	*rksp = rks;
	*nrksp = nrks;
	return 0;
}
