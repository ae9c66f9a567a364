/* Checked-in stand-in for the generated per-endpoint config header
 * (ep_config.h, written by redirect/config.py into the endpoint's state
 * directory) so bpf_lxc.c compiles in tests without an endpoint. */
#ifndef CILIATE_EP_CONFIG_H
#define CILIATE_EP_CONFIG_H
#define ENDPOINT_ID 1
#define ENDPOINT_IDENTITY 256
#define ENDPOINT_IPV4 0x0a000001 /* 10.0.0.1, host order */
#define CILIATE_PIN_DIR "/sys/fs/bpf/tc/globals"
#define IPCACHE_MAX 65536
#define LXC_MAX 1024
#define CT_MAX 65536
#define EVENTS_BYTES (256 * 1024)
#define PROXY_ADDR 0x7f000001 /* proxy listener address, host order */
#endif
