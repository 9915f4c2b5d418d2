{{/* The vcluster's name: the release name, checked like `vcluster syncer --name`. */}}
{{- define "vcluster.name" -}}
{{- if gt (len .Release.Name) 40 -}}
{{- fail (printf "release name %q is longer than 40 characters: a vcluster name must fit in host object names" .Release.Name) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .Release.Name) -}}
{{- fail (printf "release name %q is not a DNS label (lowercase letters, digits, '-')" .Release.Name) -}}
{{- end -}}
{{- .Release.Name -}}
{{- end -}}

{{/* Labels of every object the release makes (the discovery contract). */}}
{{- define "vcluster.labels" -}}
vcluster.dev/instance: {{ include "vcluster.name" . }}
app.kubernetes.io/name: vcluster
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector of the control-plane pod. */}}
{{- define "vcluster.selector" -}}
vcluster.dev/instance: {{ include "vcluster.name" . }}
vcluster.dev/component: control-plane
{{- end -}}

{{/* The syncer container. */}}
{{- define "vcluster.syncer" -}}
- name: syncer
  image: {{ .Values.syncer.image }}
  imagePullPolicy: {{ .Values.syncer.imagePullPolicy }}
  args:
    - syncer
    - --name={{ include "vcluster.name" . }}
    # Every host copy is owned by this StatefulSet: `helm uninstall` alone
    # leaves nothing of the tenant's behind (the host's garbage collector).
    - --owner-statefulset={{ include "vcluster.name" . }}
    - --sync={{ .Values.syncer.sync }}{{ if .Values.certManager.certificates.enabled }},certificates{{ end }}
    {{- if .Values.certManager.certificates.enabled }}
    - --certificate-cluster-issuers={{ join "," .Values.certManager.certificates.clusterIssuers }}
    {{- end }}
    - --virtual-kubeconfig={{ include "vcluster.virtualKubeconfig" . }}
    - --virtual-kubeconfig-wait-seconds=600
    - --client-ca-cert={{ include "vcluster.clientCA" . }}.crt
    - --client-ca-key={{ include "vcluster.clientCA" . }}.key
    - --front-door-listen=0.0.0.0:8443
    - --health-listen=0.0.0.0:8080
    - --pod-security-standard={{ .Values.isolation.podSecurityStandard }}
    {{- with .Values.tlsSANs }}
    - --tls-san={{ join "," . }}
    {{- end }}
    {{- with .Values.kubeconfigServer }}
    - --kubeconfig-server={{ . }}
    {{- end }}
    {{- with .Values.ingress.allowedHosts }}
    - --ingress-allowed-hosts={{ join "," . }}
    {{- end }}
    {{- with .Values.ingress.deniedAnnotations }}
    - --ingress-denied-annotations={{ join "," . }}
    {{- end }}
    - --allowed-service-types={{ join "," .Values.isolation.serviceTypes }}
    {{- with .Values.isolation.endpointsAllowedCIDRs }}
    - --endpoints-allowed-cidrs={{ join "," . }}
    {{- end }}
    - --ingress-host-ownership={{ .Values.ingress.hostOwnership }}
    {{- if .Values.init.manifests }}
    - --init-manifests=/etc/vcluster/init/manifests.yaml
    {{- end }}
    {{- if .Values.init.helmCharts }}
    - --init-helm-charts=/etc/vcluster/init/helm-charts.yaml
    {{- end }}
    {{- if and (include "vcluster.init" .) .Values.init.reapply }}
    - --init-reapply
    {{- end }}
    {{- with .Values.storage.classMap }}
    - --storage-class-map={{ range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }}{{ $k }}={{ index $.Values.storage.classMap $k }}{{ end }}
    {{- end }}
    {{- with .Values.storage.allowedClasses }}
    - --allowed-storage-classes={{ join "," . }}
    {{- end }}
    # The waking page: tenant ingresses point here (port wake of the
    # vcluster Service) while the vcluster sleeps.
    - --sleep-wake-listen=0.0.0.0:8081
    {{- with .Values.sleep.afterInactivity }}
    - --sleep-after={{ . }}
    {{- end }}
    {{- if .Values.sleep.countServiceAccounts }}
    - --sleep-count-service-accounts
    {{- end }}
    {{- with .Values.sleep.ignoreUserAgents }}
    - --sleep-ignore-user-agents={{ join "," . }}
    {{- end }}
    {{- with .Values.sleep.ignoreGroups }}
    - --sleep-ignore-groups={{ join "," . }}
    {{- end }}
    {{- if .Values.sleep.wakeOnCronJobs }}
    - --sleep-wake-on-cronjobs
    {{- end }}
    - --dns={{ .Values.dns.enabled }}
    {{- if .Values.dns.enabled }}
    - --dns-port=1053
    - --cluster-domain={{ .Values.dns.clusterDomain }}
    - --dns-service={{ include "vcluster.name" . }}-dns
    {{- with .Values.dns.upstreams }}
    - --dns-upstream={{ join "," . }}
    {{- end }}
    {{- end }}
    {{- range .Values.syncer.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: VCLUSTER_LOG
      value: {{ .Values.syncer.logLevel | quote }}
  ports:
    - {name: https, containerPort: 8443, protocol: TCP}
    - {name: health, containerPort: 8080, protocol: TCP}
    - {name: wake, containerPort: 8081, protocol: TCP}
    {{- if .Values.dns.enabled }}
    - {name: dns, containerPort: 1053, protocol: UDP}
    - {name: dns-tcp, containerPort: 1053, protocol: TCP}
    {{- end }}
  # /readyz: every engine's initial sync, with dns.enabled the DNS listeners
  # bound and the caches they answer from listed, and the virtual cluster's
  # default roles (admin, edit, view) aggregated.
  readinessProbe:
    httpGet: {path: /readyz, port: health}
    periodSeconds: 5
  livenessProbe:
    httpGet: {path: /healthz, port: health}
    initialDelaySeconds: 60
    periodSeconds: 10
  resources: {{- toYaml .Values.syncer.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
    readOnlyRootFilesystem: true
  volumeMounts:
    - {name: data, mountPath: /data}
    {{- if include "vcluster.init" . }}
    - {name: init-manifests, mountPath: /etc/vcluster/init, readOnly: true}
    {{- end }}
    {{- if .Values.init.helmCharts }}
    # helm's home, cache and the syncer's private kubeconfig for it (the root
    # filesystem is read-only).
    - {name: init-helm-tmp, mountPath: /tmp}
    {{- end }}
{{- end -}}

{{/* Non-empty when the syncer has init manifests or init helm charts. */}}
{{- define "vcluster.init" -}}
{{- if or .Values.init.manifests .Values.init.helmCharts }}true{{ end -}}
{{- end -}}

{{- define "vcluster.virtualKubeconfig" -}}
{{- if eq .Values.distro "k8s" -}}/data/vcluster/admin.kubeconfig{{- else -}}/data/k3s/admin.kubeconfig{{- end -}}
{{- end -}}

{{- define "vcluster.clientCA" -}}
{{- if eq .Values.distro "k8s" -}}/data/vcluster/pki/ca{{- else -}}/data/k3s/server/tls/client-ca{{- end -}}
{{- end -}}

{{/* The service CIDR argument value: given, or discovered by the init container. */}}
{{- define "vcluster.serviceCIDR" -}}
{{- if .Values.serviceCIDR -}}{{ .Values.serviceCIDR }}{{- else -}}$(cat /data/vcluster/service-cidr){{- end -}}
{{- end -}}

{{/* The upstream control plane (distro k8s): the dev stack's virtual plane
with the same flags (`vcluster control-plane-pki --print-args`; e2e_chart
compares them), etcd syncing to disk. Images are distroless: no shell. */}}
{{- /* Where the control plane reads the single sign-on configuration (templates/sso.yaml). */ -}}
{{- define "vcluster.ssoConfig" -}}
/etc/vcluster/sso/authentication-config.yaml
{{- end -}}

{{- define "vcluster.k8sContainers" -}}
{{- $cidr := .Values.serviceCIDR -}}
{{- if not $cidr -}}
{{- $obj := lookup "networking.k8s.io/v1" "ServiceCIDR" "" "kubernetes" -}}
{{- if $obj -}}{{- $cidr = join "," $obj.spec.cidrs -}}{{- else -}}{{- $cidr = "10.96.0.0/12" -}}{{- end -}}
{{- end -}}
- name: etcd
  image: {{ .Values.k8s.etcd.image }}
  command: [etcd]
  args:
    - --name=vcluster
    - --data-dir=/data/vcluster/etcd
    - --listen-client-urls=http://127.0.0.1:2379
    - --advertise-client-urls=http://127.0.0.1:2379
    - --listen-peer-urls=http://127.0.0.1:2380
    - --initial-advertise-peer-urls=http://127.0.0.1:2380
    - --initial-cluster=vcluster=http://127.0.0.1:2380
    - --log-level=warn
  securityContext:
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: data, mountPath: /data}
- name: kube-apiserver
  image: {{ .Values.k8s.apiServer.image }}
  command: [kube-apiserver]
  args:
    - --etcd-servers=http://127.0.0.1:2379
    - --bind-address=127.0.0.1
    - --advertise-address=127.0.0.1
    - --secure-port=6443
    - --tls-cert-file=/data/vcluster/pki/apiserver.crt
    - --tls-private-key-file=/data/vcluster/pki/apiserver.key
    - --client-ca-file=/data/vcluster/pki/ca.crt
    - --service-account-issuer=https://kubernetes.default.svc.cluster.local
    - --service-account-key-file=/data/vcluster/pki/sa.pub
    - --service-account-signing-key-file=/data/vcluster/pki/sa.key
    - --service-cluster-ip-range={{ $cidr }}
    - --authorization-mode=RBAC
    - --allow-privileged=true
    - --endpoint-reconciler-type=none
    - --profiling=false
    - --requestheader-client-ca-file=/data/vcluster/pki/front-proxy-ca.crt
    - --requestheader-allowed-names=front-proxy-client
    - --requestheader-username-headers=X-Remote-User
    - --requestheader-group-headers=X-Remote-Group
    - --requestheader-extra-headers-prefix=X-Remote-Extra-
    - --proxy-client-cert-file=/data/vcluster/pki/front-proxy-client.crt
    - --proxy-client-key-file=/data/vcluster/pki/front-proxy-client.key
    {{- if .Values.sso.oidc.issuerUrl }}
    - --authentication-config={{ include "vcluster.ssoConfig" . }}
    {{- end }}
    {{- range .Values.k8s.apiServer.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  resources: {{- toYaml .Values.k8s.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: data, mountPath: /data}
    {{- if .Values.sso.oidc.issuerUrl }}
    - {name: sso, mountPath: /etc/vcluster/sso, readOnly: true}
    {{- end }}
- name: kube-controller-manager
  image: {{ .Values.k8s.controllerManager.image }}
  command: [kube-controller-manager]
  args:
    - --kubeconfig=/data/vcluster/controller-manager.kubeconfig
    - --authentication-kubeconfig=/data/vcluster/controller-manager.kubeconfig
    - --authorization-kubeconfig=/data/vcluster/controller-manager.kubeconfig
    - --bind-address=127.0.0.1
    - --secure-port=10257
    - --cert-dir=/data/vcluster/controller-manager-certs
    - --leader-elect=false
    - --controllers=*,-nodeipam,-nodelifecycle,-taint-eviction-controller,-cloud-node-lifecycle,-route,-service,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-ttl
    - --use-service-account-credentials=true
    - --service-account-private-key-file=/data/vcluster/pki/sa.key
    - --root-ca-file=/data/vcluster/pki/ca.crt
    - --cluster-signing-cert-file=/data/vcluster/pki/ca.crt
    - --cluster-signing-key-file=/data/vcluster/pki/ca.key
    - --profiling=false
    {{- range .Values.k8s.controllerManager.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  securityContext:
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: data, mountPath: /data}
    {{- if include "vcluster.init" . }}
    - {name: init-manifests, mountPath: /etc/vcluster/init, readOnly: true}
    {{- end }}
{{- end -}}
