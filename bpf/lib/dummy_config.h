/* Checked-in stand-in for the generated shared config header
 * (datapath_config.h, written by redirect/config.py into <state_dir>/datapath/)
 * so the programs compile in tests without an install. Nothing here is per
 * endpoint: endpoints find their own values in ciliate_ifindex at run time. */
#ifndef CILIATE_EP_CONFIG_H
#define CILIATE_EP_CONFIG_H
#define CILIATE_PIN_DIR "/sys/fs/bpf/tc/globals"
#define IPCACHE_MAX 65536
#define LXC_MAX 1024
#define CT_MAX 65536
#define EVENTS_BYTES (256 * 1024)
#define PROXY_ADDR 0x7f000001 /* proxy listener address, host order */
#endif
